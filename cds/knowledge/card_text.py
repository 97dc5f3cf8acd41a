"""rules/cards.yaml: every word a card shows, its override reasons and its suggestion
templates (FHIR resources with ``{placeholders}`` and ``$orderable`` codes), validated into
frozen dataclasses. Which placeholders a card may use is checked by cds.cards against the
finding's typed variables (cds.clinical.findings) when the engine starts."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from marshmallow import ValidationError, fields, post_load, pre_load, validate, validates_schema

from cds.knowledge.loader import PLACEHOLDER, RulesError, Strict, placeholders
from cds.knowledge.vocabulary import (CRITERIA, FINDINGS, FLAGS, INDICATORS, KINDS, MASS_MEASURES,
                                     SITES, SUGGESTION_VARIABLES)

FILE = "cards.yaml"
_SYSTEM = validate.Regexp(r"^urn:mskcds(:[a-z\-]+)*$")
SAMPLE_VARIABLES = {"patient_id": "example", "regimen": "example regimen text",
                    "reason": "example reason"}


@dataclass(frozen=True)
class Conditional:
    """A card item shown (or offered) ``unless`` any of some flags, ``only`` with one of others."""

    unless: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def applies(self, flags: set[str] | frozenset[str]) -> bool:
        if any(f in flags for f in self.unless):
            return False
        return not self.only or any(f in flags for f in self.only)


@dataclass(frozen=True)
class FlaggedText(Conditional):
    text: str = ""


@dataclass(frozen=True)
class SuggestionRef(Conditional):
    id: str = ""


@dataclass(frozen=True)
class CardText:
    title: str
    indicator: str
    summary: str
    detail: str
    next_steps: tuple[FlaggedText, ...]
    override_reasons: tuple[str, ...]
    summary_by_grade: Mapping[str, str] = field(default_factory=dict)
    short: str | None = None
    notes: Mapping[str, str] = field(default_factory=dict)      # flag → note
    suggestions: tuple[SuggestionRef, ...] = ()
    selection_behavior: str | None = None
    problem_category: str | None = None
    links: tuple[str, ...] = ()
    evidence: str | None = None

    def texts(self) -> Iterator[tuple[str, str]]:
        """(field, text) of every template on this card."""
        yield "summary", self.summary
        yield "detail", self.detail
        for grade, text in self.summary_by_grade.items():
            yield f"summary_by_grade.{grade}", text
        if self.short is not None:
            yield "short", self.short
        for i, step in enumerate(self.next_steps):
            yield f"next_steps[{i}]", step.text
        for flag, text in self.notes.items():
            yield f"notes.{flag}", text


@dataclass(frozen=True)
class CardLabels:
    values: str
    classified: str
    notes: str
    next: str
    evidence: str
    sent_as: str
    computed: str
    patient: str
    age: str                                  # "{age} years"
    #: age now with the age at the scan, where they differ: "{age} years ({scan_age} at the scan)"
    sex: Mapping[str, str]
    delete_order: str                         # label of the suggestion that deletes a draft order
    delete_action: str                        # its action's description
    rule_page: str = "{title}"                # the card's link to its finding's rule page
    why: str = "Why:"                         # the label before the card's one-sentence reason
    age_then: str = "{age} years ({scan_age} at the scan)"
    results: Mapping[str, str] = field(default_factory=dict)
    criteria: Mapping[str, str] = field(default_factory=dict)
    #: 25(OH)D fraction labels (d2, d3, and "sum" for a total added from them)
    fractions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SuggestionTemplate:
    """A FHIR resource with ``{placeholders}`` and ``{"$orderable": name}`` codes."""

    id: str
    label: str
    action: str
    recommended: bool
    resource: Mapping[str, Any]
    #: orderable name → coding (system, code, display), from valuesets.yaml
    orderables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def orderable_names(self) -> list[str]:
        names: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$orderable" in node:
                    names.append(node["$orderable"])
                    return
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)
        walk(self.resource)
        return names

    def build(self, variables: Mapping[str, str]) -> dict[str, Any]:
        """The resource for one card; LookupError when an orderable code is not known."""
        def sub(node: Any) -> Any:
            if isinstance(node, dict):
                if "$orderable" in node:
                    coding = self.orderables.get(node["$orderable"])
                    if not coding:
                        raise LookupError(node["$orderable"])
                    concept: dict[str, Any] = {"coding": [dict(coding)]}
                    if coding.get("display"):
                        concept["text"] = coding["display"]
                    return concept
                return {k: sub(v) for k, v in node.items()}
            if isinstance(node, list):
                return [sub(v) for v in node]
            if isinstance(node, str):
                return PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), node)
            return copy.copy(node)
        result: dict[str, Any] = sub(self.resource)
        return result


@dataclass(frozen=True)
class CardRules:
    service: Mapping[str, str]                # the patient-view service (and any not in services)
    finding_system: str
    override_system: str
    override_reasons: Mapping[str, str]
    labels: CardLabels
    kinds: Mapping[str, str]
    measures: Mapping[str, str]
    sites: Mapping[str, str]
    units: Mapping[str, str]
    findings: Mapping[str, CardText]
    suggestions: Mapping[str, SuggestionTemplate]
    services: Mapping[str, Mapping[str, str]] = field(default_factory=dict)   # service id → text


# --------------------------------------------------------------------------- schemas
class _ConditionalSchema(Strict):
    unless = fields.List(fields.String(validate=validate.OneOf(FLAGS)))
    # "only" as attribute name would shadow marshmallow's Schema.only (the field selection)
    only_ = fields.List(fields.String(validate=validate.OneOf(FLAGS)), data_key="only")


class FlaggedTextSchema(_ConditionalSchema):
    text = fields.String(required=True, validate=validate.Length(min=3))

    @pre_load
    def _plain_string(self, data: Any, **_: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> FlaggedText:
        return FlaggedText(tuple(data.get("unless", ())), tuple(data.get("only_", ())), data["text"])


class SuggestionRefSchema(_ConditionalSchema):
    id = fields.String(required=True)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> SuggestionRef:
        return SuggestionRef(tuple(data.get("unless", ())), tuple(data.get("only_", ())), data["id"])


class CardSchema(Strict):
    title = fields.String(required=True, validate=validate.Length(min=3, max=80))
    indicator = fields.String(required=True, validate=validate.OneOf(INDICATORS))
    summary = fields.String(required=True, validate=validate.Length(min=3, max=139))
    summary_by_grade = fields.Dict(keys=fields.String(), values=fields.String(
        validate=validate.Length(min=3, max=139)))
    short = fields.String(validate=validate.Length(min=3, max=80))
    detail = fields.String(required=True, validate=validate.Length(min=3))
    next_steps = fields.List(fields.Nested(FlaggedTextSchema), required=True,
                             validate=validate.Length(min=1))
    notes = fields.Dict(keys=fields.String(validate=validate.OneOf(FLAGS)), values=fields.String())
    suggestions = fields.List(fields.Nested(SuggestionRefSchema))
    selection_behavior = fields.String(validate=validate.OneOf(["any", "at-most-one"]))
    override_reasons = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    problem_category = fields.String()
    links = fields.List(fields.String())
    evidence = fields.String(validate=validate.Length(min=3))

    @validates_schema
    def _selection(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("suggestions") and "selection_behavior" not in data:
            raise ValidationError("required when suggestions are given", "selection_behavior")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> CardText:
        return CardText(
            title=data["title"], indicator=data["indicator"], summary=data["summary"],
            detail=data["detail"], next_steps=tuple(data["next_steps"]),
            override_reasons=tuple(data["override_reasons"]),
            summary_by_grade=dict(data.get("summary_by_grade", {})), short=data.get("short"),
            notes=dict(data.get("notes", {})), suggestions=tuple(data.get("suggestions", ())),
            selection_behavior=data.get("selection_behavior"),
            problem_category=data.get("problem_category"), links=tuple(data.get("links", ())),
            evidence=data.get("evidence"))


class SuggestionSchema(Strict):
    label = fields.String(required=True, validate=validate.Length(min=3, max=120))
    action = fields.String(required=True, validate=validate.Length(min=3))
    recommended = fields.Boolean(load_default=False)
    resource = fields.Dict(required=True)

    @validates_schema
    def _resource_type(self, data: dict[str, Any], **_: Any) -> None:
        rtype = data.get("resource", {}).get("resourceType")
        if rtype not in ("ServiceRequest", "MedicationRequest", "Condition"):
            raise ValidationError("resourceType must be ServiceRequest, MedicationRequest or Condition",
                                  "resource")


class OverrideReasonsSchema(Strict):
    system = fields.String(required=True, validate=_SYSTEM)
    codes = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z\-]*$")),
                        values=fields.String(validate=validate.Length(min=3)), required=True,
                        validate=validate.Length(min=1))


class ServiceTextSchema(Strict):
    title = fields.String(required=True, validate=validate.Length(min=3, max=120))
    description = fields.String(required=True, validate=validate.Length(min=10, max=1000))


class LabelsSchema(Strict):
    values = fields.String(required=True)
    classified = fields.String(required=True)
    notes = fields.String(required=True)
    next = fields.String(required=True)
    evidence = fields.String(required=True)
    sent_as = fields.String(required=True)
    computed = fields.String(required=True)
    patient = fields.String(required=True)
    age = fields.String(required=True)
    age_then = fields.String(load_default="{age} years ({scan_age} at the scan)")
    sex = fields.Dict(keys=fields.String(validate=validate.OneOf(["male", "female"])),
                      values=fields.String(), required=True)
    delete_order = fields.String(required=True, validate=validate.Length(min=3))
    delete_action = fields.String(required=True, validate=validate.Length(min=3))
    results = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    criteria = fields.Dict(keys=fields.String(validate=validate.OneOf(CRITERIA)),
                           values=fields.String(), load_default=dict)
    rule_page = fields.String(required=True, validate=validate.Regexp(
        r"^[^{}]*(\{title\}[^{}]*)?$", error="may use no placeholder but {title}"))
    why = fields.String(load_default="Why:")
    fractions = fields.Dict(keys=fields.String(validate=validate.OneOf(["d2", "d3", "sum"])),
                            values=fields.String(), load_default=dict)

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> CardLabels:
        return CardLabels(**data)


def _names(names: tuple[str, ...]) -> Any:
    return fields.Dict(keys=fields.String(validate=validate.OneOf(names)), values=fields.String(),
                       required=True, validate=_all_of(names))


def _all_of(names: tuple[str, ...]) -> Any:
    def check(value: Mapping[str, Any]) -> None:
        missing = [n for n in names if n not in value]
        if missing:
            raise ValidationError(f"no label for: {', '.join(missing)}")
    return check


class CardsFileSchema(Strict):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    service = fields.Nested(ServiceTextSchema, required=True)
    services = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[A-Za-z0-9\-_.]+$")),
                           values=fields.Nested(ServiceTextSchema), load_default=dict)
    finding_system = fields.String(required=True, validate=_SYSTEM)
    override_reasons = fields.Nested(OverrideReasonsSchema, required=True)
    labels = fields.Nested(LabelsSchema, required=True)
    kinds = _names(KINDS)
    measures = _names(MASS_MEASURES)
    sites = _names(SITES)
    units = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    findings = fields.Dict(keys=fields.String(validate=validate.OneOf(FINDINGS)),
                           values=fields.Nested(CardSchema), required=True)
    suggestions = fields.Dict(keys=fields.String(validate=validate.Regexp(r"^[a-z][a-z0-9\-]*$")),
                              values=fields.Nested(SuggestionSchema), required=True)

    @validates_schema
    def _all_findings(self, data: dict[str, Any], **_: Any) -> None:
        missing = [f for f in FINDINGS if f not in data.get("findings", {})]
        if missing:
            raise ValidationError(f"no card defined for: {', '.join(missing)}", "findings")

    @post_load
    def _make(self, data: dict[str, Any], **_: Any) -> CardRules:
        reasons = data["override_reasons"]
        return CardRules(
            service={k: " ".join(v.split()) for k, v in data["service"].items()},
            services={sid: {k: " ".join(v.split()) for k, v in text.items()}
                      for sid, text in data["services"].items()},
            finding_system=data["finding_system"], override_system=reasons["system"],
            override_reasons=dict(reasons["codes"]), labels=data["labels"], kinds=dict(data["kinds"]),
            measures=dict(data["measures"]), sites=dict(data["sites"]), units=dict(data["units"]),
            findings=dict(data["findings"]),
            suggestions={sid: SuggestionTemplate(sid, s["label"], s["action"], s["recommended"],
                                                 s["resource"])
                         for sid, s in data["suggestions"].items()})


# --------------------------------------------------------------------------- cross-checks
def check_cards(path: Path, cards: CardRules, citations: Mapping[str, Any],
                orderable: Any | None) -> CardRules:
    """Every suggestion, override reason and citation a card names exists; each suggestion's
    placeholders are known and its orderables are in the value sets; its FHIR resource is
    valid R4. ``orderable(name)`` → coding, or KeyError (None: no value sets loaded).
    Returns the cards with each suggestion's orderable codes resolved."""
    for name, card in cards.findings.items():
        where = f"findings.{name}"
        for i, ref in enumerate(card.suggestions):
            if ref.id not in cards.suggestions:
                raise RulesError(path, f"{where}.suggestions[{i}].id: unknown suggestion {ref.id!r}")
        for i, code in enumerate(card.override_reasons):
            if code not in cards.override_reasons:
                raise RulesError(path, f"{where}.override_reasons[{i}]: unknown reason {code!r}")
        for i, cid in enumerate(card.links):
            if cid not in citations:
                raise RulesError(path, f"{where}.links[{i}]: unknown citation {cid!r} "
                                       f"(not in citations.yaml)")
    return replace(cards, suggestions={sid: _check_suggestion(path, t, orderable)
                                       for sid, t in cards.suggestions.items()})


def _check_suggestion(path: Path, template: SuggestionTemplate,
                      orderable: Any | None) -> SuggestionTemplate:
    where = f"suggestions.{template.id}.resource"
    _check_placeholders(path, where, template.resource)
    names = template.orderable_names()
    if orderable is None:
        if not names:
            _validate_fhir(path, where, template.build(SAMPLE_VARIABLES))
        return template
    codings: dict[str, Mapping[str, str]] = {}
    for name in names:
        try:
            found = orderable(name)
        except (KeyError, LookupError):
            found = None
        if not found:
            raise RulesError(path, f"{where}: orderable {name!r} is not in valuesets.yaml orderables")
        codings[name] = {k: found[k] for k in ("system", "code", "display") if found.get(k)}
    template = replace(template, orderables=codings)
    _validate_fhir(path, where, template.build(SAMPLE_VARIABLES))
    return template


def _check_placeholders(path: Path, at: str, node: Any) -> None:
    if isinstance(node, dict):
        if "$orderable" in node and set(node) != {"$orderable"}:
            raise RulesError(path, f"{at}: '$orderable' must stand alone")
        for k, v in node.items():
            if k != "$orderable":
                _check_placeholders(path, f"{at}.{k}", v)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_placeholders(path, f"{at}[{i}]", v)
    elif isinstance(node, str):
        unknown = placeholders(node) - SUGGESTION_VARIABLES
        if unknown:
            raise RulesError(path, f"{at}: unknown template variable(s) {sorted(unknown)}; "
                                   f"allowed: {sorted(SUGGESTION_VARIABLES)}")


def _validate_fhir(path: Path, where: str, resource: Mapping[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        cls = get_fhir_model_class(resource["resourceType"])
        cls.model_validate({k: v for k, v in resource.items() if k != "resourceType"} | {
            "resourceType": resource["resourceType"]})
    except Exception as exc:  # pydantic ValidationError and friends
        first = str(exc).strip().splitlines()
        raise RulesError(path, f"{where}: not a valid FHIR R4 {resource.get('resourceType')}: "
                               f"{' '.join(first[:3])}") from None


def check_templates(path: Path, cards: CardRules, allowed: Mapping[str, frozenset[str]]) -> None:
    """Each card's placeholders are variables its finding provides (``allowed``: finding →
    names); a placeholder no finding provides stops start-up naming the field."""
    for name, card in cards.findings.items():
        names = allowed.get(name, frozenset())
        for key, text in card.texts():
            unknown = sorted(placeholders(text) - names)
            if unknown:
                raise RulesError(path, f"findings.{name}.{key}: unknown template variable(s) "
                                       f"{', '.join('{' + u + '}' for u in unknown)}; "
                                       f"allowed: {', '.join(sorted(names))}")
