"""Wire schemas: the CDS Hooks 2.0 envelope (https://cds-hooks.hl7.org/2.0/).

Requests are *loaded* (validated) with these schemas before anything else
touches them; every card, response and discovery document is *checked* with
them before it leaves. ``load_or_raise`` turns marshmallow's nested error dict
into one OperationOutcome issue per problem, each naming its field.
"""
from __future__ import annotations

import re
from datetime import timezone
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import (EXCLUDE, INCLUDE, RAISE, Schema, ValidationError, fields,
                         validate, validates_schema)

from cds.errors import BadRequest, Issue, flatten_errors

#: A FHIR R4 id (https://hl7.org/fhir/R4/datatypes.html#id), as text for patterns that embed one.
ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
FHIR_ID = re.compile(rf"^{ID_PATTERN}$")
FHIR_REFERENCE = re.compile(rf"^[A-Z][A-Za-z]+/{ID_PATTERN}$")
#: CDS Hooks 2.0 service ids appear in URLs: letters, digits, '-', '_' and '.'.
SERVICE_ID = re.compile(r"^[A-Za-z0-9\-_.]+$")
PREFETCH_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
SUMMARY_MAX = 139  # the spec: "<140 characters"


# --------------------------------------------------------------------------- helpers
def load_or_raise(schema: Schema, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise BadRequest(Issue("The request body must be a JSON object.", expression=prefix or None))
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise BadRequest(flatten_errors(exc.messages, prefix)) from None


def empty_paths(value: Any, path: str = "") -> list[str]:
    """Paths of every null, empty string, empty list or empty object (forbidden on the wire)."""
    found: list[str] = []
    if value is None or value == "" or value == [] or value == {}:
        return [path or "<root>"]
    if isinstance(value, Mapping):
        for key, item in value.items():
            found.extend(empty_paths(item, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(empty_paths(item, f"{path}[{index}]"))
    return found


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("must not be blank")


NonBlank = validate.And(validate.Length(min=1), _not_blank)


# --------------------------------------------------------------------------- request
class FhirAuthorizationSchema(Schema):
    class Meta:
        unknown = INCLUDE

    # Sent as "Authorization: Bearer <token>": visible ASCII only (RFC 6750's b64token is
    # narrower still). CR/LF, NUL, spaces or non-ASCII cannot travel in a header; they
    # made the fetch fail as a misleading 412 (or sent a NUL to the FHIR server).
    access_token = fields.String(required=True, validate=validate.Regexp(
        r"^[\x21-\x7e]+$", error="must be visible ASCII characters (an OAuth 2.0 bearer token)"))
    token_type = fields.String(required=True, validate=validate.Equal(
        "Bearer", error="must be 'Bearer'"))
    expires_in = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    scope = fields.String(required=True, validate=NonBlank)
    subject = fields.String(required=True, validate=NonBlank)
    patient = fields.String(validate=validate.Regexp(FHIR_ID, error="must be a FHIR id"))


class PatientViewContextSchema(Schema):
    """patient-view context (CDS Hooks Library, patient-view 1.0)."""

    class Meta:
        unknown = INCLUDE

    userId = fields.String(required=True, validate=validate.Regexp(
        rf"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/{ID_PATTERN}$",
        error="must be Practitioner/<id>, PractitionerRole/<id>, Patient/<id> or RelatedPerson/<id>"))
    patientId = fields.String(required=True, validate=validate.Regexp(
        FHIR_ID, error="must be a bare FHIR Patient id (no 'Patient/' prefix)"))
    encounterId = fields.String(validate=validate.Regexp(FHIR_ID, error="must be a bare FHIR id"))


# --------------------------------------------------------------------------- order hooks
#: The request resources a draftOrders Bundle may hold (CDS Hooks Library 1.0.1, order-select and
#: order-sign context logicals: "FHIR Bundle of MedicationRequest, NutritionOrder, ServiceRequest,
#: VisionPrescription with draft status").
DRAFT_ORDER_TYPES = ("MedicationRequest", "NutritionOrder", "ServiceRequest", "VisionPrescription")
#: More draft orders than this in one call is not an ordering session: refused, not read.
MAX_DRAFT_ORDERS = 200
#: CDS Hooks Library ord-1 ("Must be in the format {type}/{id}"), with a FHIR id.
ORDER_REFERENCE = re.compile(rf"^[A-Za-z]+/{ID_PATTERN}$")
_ORDER_USER = validate.Regexp(
    rf"^(Practitioner|PractitionerRole)/{ID_PATTERN}$",
    error="must be Practitioner/<id> or PractitionerRole/<id> (the ordering clinician)")


def _names_patient(ref: Any, patient_id: str) -> bool:
    if not isinstance(ref, Mapping) or not isinstance(ref.get("reference"), str):
        return False
    value = ref["reference"].split("/_history/", 1)[0]
    return value == f"Patient/{patient_id}" or value.endswith(f"/Patient/{patient_id}")


def draft_order_problems(bundle: Any, patient_id: Any, hook: str) -> dict[str, Any]:
    """marshmallow-style error messages for a draftOrders Bundle ({} when it is usable)."""
    if not isinstance(bundle, Mapping):
        return {"draftOrders": ["must be a FHIR Bundle (JSON object)"]}
    if bundle.get("resourceType") != "Bundle":
        return {"draftOrders": {"resourceType": ["must be 'Bundle'"]}}
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        return {"draftOrders": {"entry": ["must be a list of Bundle entries"]}}
    if len(entries) > MAX_DRAFT_ORDERS:
        return {"draftOrders": {"entry": [f"more than {MAX_DRAFT_ORDERS} draft orders"]}}
    bad: dict[int, Any] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            bad[i] = {"resource": ["is required (a FHIR resource)"]}
            continue
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in DRAFT_ORDER_TYPES:
            shown = repr(rtype[:40]) if isinstance(rtype, str) else "missing"
            bad[i] = {"resource": {"resourceType": [
                f"{shown} is not an order type the {hook} hook allows "
                f"({', '.join(DRAFT_ORDER_TYPES)})"]}}
            continue
        rid = resource.get("id")
        if rid is not None:
            if not isinstance(rid, str) or not FHIR_ID.match(rid):
                bad[i] = {"resource": {"id": ["must be a FHIR id"]}}
                continue
            if f"{rtype}/{rid}" in seen:
                bad[i] = {"resource": {"id": [f"{rtype}/{rid} appears twice in draftOrders"]}}
                continue
            seen.add(f"{rtype}/{rid}")
        field_name = "patient" if rtype == "NutritionOrder" else "subject"
        ref = resource.get(field_name)
        if ref is not None and isinstance(patient_id, str) and not _names_patient(ref, patient_id):
            bad[i] = {"resource": {field_name: ["names another patient than context.patientId"]}}
    return {"draftOrders": {"entry": bad}} if bad else {}


def draft_order_refs(bundle: Mapping[str, Any]) -> set[str]:
    """``Type/id`` of every draft order that has an id."""
    out = set()
    for entry in bundle.get("entry", []) or []:
        res = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(res, Mapping) and isinstance(res.get("id"), str):
            out.add(f"{res.get('resourceType')}/{res['id']}")
    return out


class OrderSignContextSchema(Schema):
    """order-sign context (CDS Hooks Library 1.0.1, order-sign 1.0)."""

    class Meta:
        unknown = INCLUDE

    userId = fields.String(required=True, validate=_ORDER_USER)
    patientId = fields.String(required=True, validate=validate.Regexp(
        FHIR_ID, error="must be a bare FHIR Patient id (no 'Patient/' prefix)"))
    encounterId = fields.String(validate=validate.Regexp(FHIR_ID, error="must be a bare FHIR id"))
    draftOrders = fields.Raw(required=True)
    hook_name = "order-sign"

    @validates_schema(skip_on_field_errors=False)
    def _draft_orders(self, data: dict, **kwargs: Any) -> None:
        if "draftOrders" in data:
            problems = draft_order_problems(data["draftOrders"], data.get("patientId"), self.hook_name)
            if problems:
                raise ValidationError(problems)


class OrderSelectContextSchema(OrderSignContextSchema):
    """order-select context (CDS Hooks Library 1.0.1, order-select 1.0): ``selections`` name
    the newly selected orders, each one in ``draftOrders``."""

    selections = fields.List(fields.String(validate=validate.Regexp(
        ORDER_REFERENCE, error="must be <resourceType>/<id>")), required=True,
        validate=validate.Length(min=1))
    hook_name = "order-select"

    @validates_schema(skip_on_field_errors=True)
    def _selections(self, data: dict, **kwargs: Any) -> None:
        if draft_order_problems(data["draftOrders"], data.get("patientId"), self.hook_name):
            return   # the Bundle itself is reported; a selection cannot be checked against it
        known = draft_order_refs(data["draftOrders"])
        bad = {i: [f"{ref[:80]!r} names no order in draftOrders"]
               for i, ref in enumerate(data["selections"]) if ref not in known}
        if bad:
            raise ValidationError({"selections": bad})


#: hook name → context schema (instances are reused: marshmallow 4 schemas keep no per-call
#: state). A service answers only the hook it declares.
CONTEXT_SCHEMAS: dict[str, Schema] = {"patient-view": PatientViewContextSchema(),
                                      "order-select": OrderSelectContextSchema(),
                                      "order-sign": OrderSignContextSchema()}


class HookRequestSchema(Schema):
    class Meta:
        unknown = INCLUDE  # extensions and future fields are tolerated, never used

    hook = fields.String(required=True, validate=NonBlank)
    hookInstance = fields.UUID(required=True)
    fhirServer = fields.Url(require_tld=False, schemes={"http", "https"})
    fhirAuthorization = fields.Nested(FhirAuthorizationSchema)
    context = fields.Dict(required=True)
    prefetch = fields.Dict(keys=fields.String(validate=validate.Regexp(
        PREFETCH_KEY, error="prefetch keys are letters, digits, '-' and '_'")),
        values=fields.Raw(allow_none=True))
    extension = fields.Dict()

    @validates_schema(skip_on_field_errors=False)  # report these alongside field errors
    def _cross_checks(self, data: dict, **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}
        if "fhirAuthorization" in data and "fhirServer" not in data:
            errors["fhirServer"] = ["is required when fhirAuthorization is present"]
        bad: dict[str, list[str]] = {}
        for key, value in (data.get("prefetch") or {}).items():
            if value is not None and not isinstance(value, Mapping):
                bad[key] = ["must be a FHIR resource (JSON object) or null"]
            elif isinstance(value, Mapping) and not isinstance(value.get("resourceType"), str):
                bad[key] = ["has no resourceType"]
        if bad:
            errors["prefetch"] = bad  # type: ignore[assignment]  # → expression prefetch.<key>
        if errors:
            raise ValidationError(errors)


def _wrong_hook(expected: str, got: str) -> Issue:
    return Issue(f"hook: this service answers '{expected}', not '{got[:64]}'",
                 expression="hook", code="not-supported")


def load_hook_request(payload: Any, expected_hook: str) -> dict[str, Any]:
    """Validate a service call for a service that answers ``expected_hook``."""
    try:
        data = load_or_raise(_HOOK_REQUEST_SCHEMA, payload)
    except BadRequest as exc:
        # A request for another hook is told so first, whatever else is wrong with it.
        hook = payload.get("hook") if isinstance(payload, Mapping) else None
        if isinstance(hook, str) and hook.strip() and hook != expected_hook:
            raise BadRequest([_wrong_hook(expected_hook, hook), *exc.issues]) from None
        # Same hook: report the context's problems too, so one answer lists everything.
        context = payload.get("context") if isinstance(payload, Mapping) else None
        context_schema = CONTEXT_SCHEMAS.get(expected_hook)
        if isinstance(context, Mapping) and context_schema is not None:
            more = context_schema.validate(context)
            if more:
                raise BadRequest([*exc.issues, *flatten_errors(more, "context")]) from None
        raise
    if data["hook"] != expected_hook:
        raise BadRequest(_wrong_hook(expected_hook, data["hook"]))
    context_schema = CONTEXT_SCHEMAS.get(expected_hook)
    if context_schema is None:  # pragma: no cover - guarded by service registry
        raise BadRequest(Issue(f"hook '{expected_hook}' is not supported", expression="hook"))
    data["context"] = load_or_raise(context_schema, data["context"], prefix="context")
    data.setdefault("prefetch", {})
    return data


# --------------------------------------------------------------------------- response
class CodingSchema(Schema):
    class Meta:
        unknown = RAISE

    system = fields.String(required=True, validate=NonBlank)
    code = fields.String(required=True, validate=NonBlank)
    display = fields.String(validate=NonBlank)


class IncomingCodingSchema(CodingSchema):
    """A Coding a client sends (feedback): FHIR Coding fields we do not use (``version``,
    ``userSelected``, ``extension``) are ignored, not refused. Our own Codings stay strict."""

    class Meta:
        unknown = EXCLUDE


class SourceSchema(Schema):
    class Meta:
        unknown = RAISE

    label = fields.String(required=True, validate=NonBlank)
    url = fields.Url(require_tld=False)
    icon = fields.Url(require_tld=False)
    topic = fields.Nested(CodingSchema)


class ActionSchema(Schema):
    class Meta:
        unknown = RAISE

    # CDS Hooks 2.0 Action: description OPTIONAL; resourceId a string (a relative
    # reference) that SHOULD (not SHALL) be given for delete; resource SHALL for create/update.
    type = fields.String(required=True, validate=validate.OneOf(["create", "update", "delete"]))
    description = fields.String(validate=NonBlank)
    resource = fields.Dict()
    resourceId = fields.String(validate=NonBlank)
    extension = fields.Dict()  # CDS Hooks 2.0 "Extensions"

    @validates_schema
    def _resource_for_type(self, data: dict, **kwargs: Any) -> None:
        if data.get("type") in {"create", "update"} and "resource" not in data:
            raise ValidationError({"resource": ["is required for create and update actions"]})


class SuggestionSchema(Schema):
    class Meta:
        unknown = RAISE

    label = fields.String(required=True, validate=NonBlank)
    uuid = fields.UUID()  # OPTIONAL on the wire; our own suggestions always carry one
    isRecommended = fields.Boolean()
    actions = fields.List(fields.Nested(ActionSchema), validate=validate.Length(min=1))
    extension = fields.Dict()


class LinkSchema(Schema):
    class Meta:
        unknown = RAISE

    label = fields.String(required=True, validate=NonBlank)
    url = fields.Url(required=True, require_tld=False)
    type = fields.String(required=True, validate=validate.OneOf(["absolute", "smart"]))
    appContext = fields.String(validate=NonBlank)
    autolaunchable = fields.Boolean()


class CardSchema(Schema):
    class Meta:
        unknown = RAISE

    # uuid and indicator: OPTIONAL in the spec's examples and logical model (the
    # autolaunchable example has no indicator); our own cards always carry both
    # (see OWN_CARD_FIELDS, enforced by check_outgoing).
    uuid = fields.UUID()
    summary = fields.String(required=True, validate=validate.And(
        NonBlank, validate.Length(max=SUMMARY_MAX)))
    detail = fields.String(validate=NonBlank)
    indicator = fields.String(validate=validate.OneOf(["info", "warning", "critical"]))
    source = fields.Nested(SourceSchema, required=True)
    suggestions = fields.List(fields.Nested(SuggestionSchema), validate=validate.Length(min=1))
    selectionBehavior = fields.String(validate=validate.OneOf(["at-most-one", "any"]))
    overrideReasons = fields.List(fields.Nested(CodingSchema), validate=validate.Length(min=1))
    links = fields.List(fields.Nested(LinkSchema), validate=validate.Length(min=1))
    extension = fields.Dict()

    @validates_schema
    def _selection(self, data: dict, **kwargs: Any) -> None:
        if data.get("suggestions") and "selectionBehavior" not in data:
            raise ValidationError({"selectionBehavior": ["is required when suggestions are present"]})
        uuids = [str(s["uuid"]) for s in data.get("suggestions", []) if "uuid" in s]
        if len(uuids) != len(set(uuids)):
            raise ValidationError({"suggestions": ["suggestion uuids must be unique"]})


class SystemActionSchema(ActionSchema):
    pass


class ResponseSchema(Schema):
    class Meta:
        unknown = RAISE

    cards = fields.List(fields.Nested(CardSchema), required=True)
    systemActions = fields.List(fields.Nested(SystemActionSchema), validate=validate.Length(min=1))
    extension = fields.Dict()


class ServiceDefinitionSchema(Schema):
    class Meta:
        unknown = RAISE

    hook = fields.String(required=True, validate=NonBlank)
    id = fields.String(required=True, validate=validate.Regexp(SERVICE_ID))
    title = fields.String(validate=NonBlank)
    description = fields.String(required=True, validate=NonBlank)
    prefetch = fields.Dict(keys=fields.String(validate=validate.Regexp(PREFETCH_KEY)),
                           values=fields.String(validate=NonBlank))
    usageRequirements = fields.String(validate=NonBlank)
    extension = fields.Dict()


class DiscoverySchema(Schema):
    class Meta:
        unknown = RAISE

    services = fields.List(fields.Nested(ServiceDefinitionSchema), required=True)


class WireError(AssertionError):
    """Something *we* produced breaks the wire contract: a bug, never the client's fault."""


#: What the spec leaves optional but every card *we* send carries (feedback needs the uuids).
OWN_CARD_FIELDS = ("uuid", "indicator")


def own_card_problems(card: Any, path: str = "card") -> list[str]:
    if not isinstance(card, Mapping):
        return []
    problems = [f"{path}.{name} is missing" for name in OWN_CARD_FIELDS if name not in card]
    for j, suggestion in enumerate(card.get("suggestions") or []):
        if isinstance(suggestion, Mapping) and "uuid" not in suggestion:
            problems.append(f"{path}.suggestions[{j}].uuid is missing")
    return problems


def check_outgoing(schema: Schema, document: Mapping[str, Any], what: str) -> None:
    """Raise WireError if an outgoing document is not spec-valid (including empty values)
    or a card of ours lacks what we always send (OWN_CARD_FIELDS, suggestion uuids)."""
    errors: Any = schema.validate(document)
    if isinstance(schema, CardSchema):
        own = own_card_problems(document)
    elif isinstance(schema, ResponseSchema):
        own = [p for i, card in enumerate(document.get("cards") or [])
               for p in own_card_problems(card, f"cards[{i}]")]
    else:
        own = []
    if own:
        errors = {**(errors or {}), "_own": own}
    if isinstance(schema, ResponseSchema):
        # The one empty value the spec allows: a response with no cards.
        empties = [p for i, card in enumerate(document.get("cards") or [])
                   for p in empty_paths(card, f"cards[{i}]")]
        empties += empty_paths({k: v for k, v in document.items() if k != "cards"} or {"_": 1})
    else:
        empties = empty_paths(document)
    if errors or empties:
        raise WireError(f"{what} breaks the CDS Hooks wire contract: errors={errors} empty={empties}")


# Schema instances are reused: building one (and its nested schemas) costs more than
# validating a card with it. marshmallow 4 schemas keep no per-call state.
_CARD_SCHEMA = CardSchema()
_RESPONSE_SCHEMA = ResponseSchema()
_HOOK_REQUEST_SCHEMA = HookRequestSchema()


def check_card(card: Mapping[str, Any]) -> None:
    check_outgoing(_CARD_SCHEMA, card, "card")


def check_response(response: Mapping[str, Any], *, cards_checked: bool = False) -> None:
    """Check a whole response. ``cards_checked``: every card already passed ``check_card``
    (cards.build_cards does that for each card it builds), so only the envelope around them
    is checked here; validating each card twice cost a third of a service call."""
    if cards_checked:
        if response.keys() == {"cards"} and isinstance(response["cards"], list):
            return   # the envelope is {"cards": [...]}: nothing the schema could refuse
        envelope = {**response, "cards": []}
        check_outgoing(_RESPONSE_SCHEMA, envelope, "response")
        if not isinstance(response.get("cards"), list):
            raise WireError("response.cards must be a list")
        return
    check_outgoing(_RESPONSE_SCHEMA, response, "response")


# --------------------------------------------------------------------------- feedback
#: RFC 3339 section 5.6 date-time (the spec's outcomeTimestamp): a time zone is required.
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


class Rfc3339DateTime(fields.AwareDateTime):
    """An RFC 3339 date-time string (stricter than ISO 8601 parsing) → aware datetime."""

    default_error_messages = {"rfc3339": "must be an RFC 3339 date-time with a time zone, "
                                         "e.g. 2021-12-11T10:05:31Z",
                              "range": "must fall within the years 0001-9999 in UTC"}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not RFC3339.match(value):
            raise self.make_error("rfc3339")
        # Python parses at most microseconds: trim extra fraction digits first.
        value = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("z", "Z").replace("t", "T")
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:  # 0001-01-01T00:00:00+01:00 parses, but has no UTC equivalent (stored as UTC)
            moment.astimezone(timezone.utc)
        except OverflowError:
            raise self.make_error("range") from None
        return moment


class OverrideReasonSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    reason = fields.Nested(IncomingCodingSchema)
    userComment = fields.String(validate=NonBlank)

    @validates_schema
    def _some_content(self, data: dict, **kwargs: Any) -> None:
        if not data:
            raise ValidationError("overrideReason needs a reason or a userComment")


class AcceptedSuggestionSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.UUID(required=True)


class FeedbackItemSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    card = fields.UUID(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["accepted", "overridden"]))
    acceptedSuggestions = fields.List(fields.Nested(AcceptedSuggestionSchema))
    overrideReason = fields.Nested(OverrideReasonSchema)
    outcomeTimestamp = Rfc3339DateTime(required=True, format="iso")

    @validates_schema
    def _outcome_rules(self, data: dict, **kwargs: Any) -> None:
        if data.get("outcome") == "accepted":
            if not data.get("acceptedSuggestions"):
                raise ValidationError({"acceptedSuggestions": ["is required when outcome is 'accepted'"]})
            if "overrideReason" in data:
                raise ValidationError({"overrideReason": ["only allowed when outcome is 'overridden'"]})
        if data.get("outcome") == "overridden" and data.get("acceptedSuggestions"):
            raise ValidationError({"acceptedSuggestions": ["only allowed when outcome is 'accepted'"]})


class FeedbackSchema(Schema):
    class Meta:
        unknown = INCLUDE

    feedback = fields.List(fields.Nested(FeedbackItemSchema), required=True,
                           validate=validate.Length(min=1))


def load_feedback(payload: Any) -> list[dict[str, Any]]:
    return load_or_raise(FeedbackSchema(), payload)["feedback"]


def coding_list(items: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    return [dict(item) for item in items]
