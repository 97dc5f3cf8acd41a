"""The OpenAPI 3.1 document of the running service (``GET /openapi.json``).

Generated at start-up with apispec from the marshmallow wire schemas (cds.hooks.wire) the
service itself validates with, and from the service registry: one operation per service
and per feedback endpoint, with that hook's context schema. Rules the schemas check in
code (a field required when another is present, feedback's outcome rules, prefetch
values) are stated in JSON Schema in ``_refine``, so generic tools (schemathesis, client
generators, gateways) see the contract the service enforces.
"""
from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields, validate

from cds import __version__
from cds.config import Config
from cds.hooks import wire

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class OperationOutcomeIssueSchema(Schema):
    severity = fields.String(required=True, validate=validate.OneOf(
        ["fatal", "error", "warning", "information"]))
    code = fields.String(required=True)
    diagnostics = fields.String(required=True)
    expression = fields.List(fields.String())


class OperationOutcomeSchema(Schema):
    resourceType = fields.String(required=True, validate=validate.OneOf(["OperationOutcome"]))
    issue = fields.List(fields.Nested(OperationOutcomeIssueSchema), required=True)


class FeedbackAnswerSchema(Schema):
    stored = fields.Integer(required=True, validate=validate.Range(min=0))
    duplicates = fields.Integer(required=True, validate=validate.Range(min=0))


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))
    services = fields.List(fields.String(), required=True)


class ReadySchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


def _nested_length(self: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """apispec reads Length only at the top of ``validate``; ours sit inside And()."""
    out: dict[str, Any] = {}
    for validator in field.validators:
        for inner in getattr(validator, "validators", ()):
            if isinstance(inner, validate.Length):
                if inner.min is not None:
                    out["minLength"] = inner.min
                if inner.max is not None:
                    out["maxLength"] = inner.max
    return out


def _json(schema: str) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("OperationOutcome")}


def _unavailable() -> dict[str, Any]:
    return {"description": "A store the service needs is unavailable; retry later.",
            "headers": {"Retry-After": {"schema": {"type": "string"},
                                        "description": "Seconds to wait."}},
            "content": _json("OperationOutcome")}


#: A summary bound as the service reads it: empty (= not given), or a day or an RFC 3339
#: date-time, surrounding white space ignored.
_BOUND = ("^$|^\\s*([0-9]{4}-[0-9]{2}-[0-9]{2}|" + wire.RFC3339.pattern.strip("^$")
          + ")\\s*$")


def _title(hook: str) -> str:
    return "".join(part.title() for part in hook.split("-"))


def document(engine: Any, config: Config) -> dict[str, Any]:
    """The OpenAPI document for ``engine``'s services under ``config`` (auth on or off)."""
    plugin = MarshmallowPlugin()
    spec = APISpec(title="mskcds: CDS Hooks service for bone and muscle health",
                   version=__version__, openapi_version=OPENAPI_VERSION, plugins=[plugin],
                   info={"description": "CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/) "
                         "services; every error is a FHIR OperationOutcome."})
    plugin.converter.add_attribute_function(_nested_length)  # type: ignore[union-attr]
    for name, schema in (("OperationOutcome", OperationOutcomeSchema),
                         ("Discovery", wire.DiscoverySchema), ("CdsResponse", wire.ResponseSchema),
                         ("Feedback", wire.FeedbackSchema), ("FeedbackAnswer", FeedbackAnswerSchema),
                         ("Health", HealthSchema), ("Ready", ReadySchema)):
        spec.components.schema(name, schema=schema)
    security: list[dict[str, list[str]]] = []
    auth_errors: dict[str, Any] = {}
    if config.require_auth:
        spec.components.security_scheme("cdsClientJwt", {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "CDS Hooks 2.0 client JWT; aud is the URL of the endpoint called."})
        security = [{"cdsClientJwt": []}]
        auth_errors = {"401": _error("Authentication failed.")}
    body_errors = {"400": _error("The request is not valid; each issue names its field."),
                   "413": _error("The body is larger than the limit."),
                   "415": _error("The body is not application/json.")}

    spec.path("/cds-services", operations={"get": {
        "operationId": "discovery", "summary": "CDS Hooks discovery", "security": security,
        "responses": {"200": {"description": "The services.", "content": _json("Discovery")},
                      **auth_errors}}})
    for service_id in engine.services:
        service = engine.services[service_id]
        context = type(wire.CONTEXT_SCHEMAS[service.hook])
        request_name = f"{_title(service.hook)}Request"
        if request_name not in spec.components.schemas:
            request_schema = type(f"{request_name}Schema", (wire.HookRequestSchema,), {
                "hook": fields.String(required=True, validate=validate.OneOf([service.hook])),
                "context": fields.Nested(context, required=True)})
            spec.components.schema(request_name, schema=request_schema)
        spec.path(f"/cds-services/{service.id}", operations={"post": {
            "operationId": f"call-{service.id}", "summary": service.title,
            "description": service.description, "security": security,
            "requestBody": {"required": True, "content": _json(request_name)},
            "responses": {"200": {"description": "Cards (possibly none).",
                                  "content": _json("CdsResponse")},
                          **body_errors, **auth_errors,
                          "404": _error("No such service."),
                          "412": _error("Data the service needs was neither sent in the "
                                        "prefetch nor fetchable; each issue names the key."),
                          "503": _unavailable()}}})
        spec.path(f"/cds-services/{service.id}/feedback", operations={"post": {
            "operationId": f"feedback-{service.id}",
            "summary": f"Feedback on the cards of {service.id}", "security": security,
            "requestBody": {"required": True, "content": _json("Feedback")},
            "responses": {"200": {"description": "Stored (a report equal to a stored one "
                                  "is a duplicate, kept once).",
                                  "content": _json("FeedbackAnswer")},
                          **body_errors, **auth_errors,
                          "404": _error("No such service, or every card the request names is "
                                        "unknown to this service (another client's card is "
                                        "answered alike)."),
                          "503": _unavailable()}}})
    spec.path("/admin/feedback-summary", operations={"get": {
        "operationId": "feedback-summary",
        "summary": "Feedback per finding (off unless MSKCDS_ADMIN_SUMMARY_ENABLED)",
        "security": security,
        "parameters": [{"name": name, "in": "query", "required": False,
                        "schema": {"type": "string", "pattern": _BOUND},
                        "description": "YYYY-MM-DD (a whole UTC day; 'to' includes it) or an "
                        "RFC 3339 date-time; 'from' must be before 'to'"}
                       for name in ("from", "to")],
        "responses": {"200": {"description": "Per finding: issued, accepted, overridden, "
                              "acceptance rate, override reasons.",
                              "content": {JSON: {"schema": {"type": "object"}}}},
                      "400": _error("A bound is not a date."), **auth_errors,
                      "404": _error("The summary is disabled."), "503": _unavailable()}}})
    html = {"text/html; charset=utf-8": {"schema": {"type": "string"}}}
    spec.path("/rules", operations={"get": {
        "operationId": "rule-pages", "summary": "The findings, their rules and sources (HTML)",
        "responses": {"200": {"description": "Index page.", "content": html}}}})
    spec.path("/rules/{finding}", operations={"get": {
        "operationId": "rule-page", "summary": "One finding's rules and sources (HTML)",
        "parameters": [{"name": "finding", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The page.", "content": html},
                      "404": _error("No such finding.")}}})
    spec.path("/preview", operations={"post": {
        "operationId": "preview",
        "summary": "Cards as an EHR would show them (HTML; off unless MSKCDS_PREVIEW_ENABLED)",
        "security": security,
        "parameters": [{"name": "service", "in": "query", "required": False,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {JSON: {"schema": {
            "type": "object", "description": "A service call's request, or a FHIR Bundle "
            "holding one Patient"}}}},
        "responses": {"200": {"description": "The preview page.", "content": html},
                      **body_errors, **auth_errors,
                      "404": _error("The preview is disabled, or no such service."),
                      "412": _error("Data the service needs was neither sent nor fetchable."),
                      "503": _unavailable()}}})
    spec.path("/healthz", operations={"get": {
        "operationId": "healthz", "summary": "Liveness: the process answers",
        "responses": {"200": {"description": "Alive.", "content": _json("Health")}}}})
    spec.path("/readyz", operations={"get": {
        "operationId": "readyz", "summary": "Readiness: rules, database and replay cache usable",
        "responses": {"200": {"description": "Ready.", "content": _json("Ready")},
                      "503": _unavailable()}}})
    spec.path("/metrics", operations={"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (MSKCDS_METRICS_ALLOW clients)",
        "responses": {"200": {"description": "Prometheus text format.",
                              "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}},
                      "404": _error("Not available to this client.")}}})
    spec.path("/openapi.json", operations={"get": {
        "operationId": "openapi", "summary": "This document",
        "responses": {"200": {"description": "OpenAPI 3.1.",
                              "content": {JSON: {"schema": {"type": "object"}}}}}}})
    doc = spec.to_dict()
    _refine(doc["components"]["schemas"])
    return doc


def _refine(schemas: dict[str, Any]) -> None:
    """What the wire schemas check in code, stated in JSON Schema (2020-12)."""
    for name, schema in schemas.items():
        props = schema.get("properties", {})
        if name.endswith("Request") and "fhirServer" in props:
            # fields.Url(schemes={http, https}); required with fhirAuthorization.
            props["fhirServer"] = {"type": "string", "format": "uri",
                                   "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\\s]+"}
            schema["dependentRequired"] = {"fhirAuthorization": ["fhirServer"]}
            props["prefetch"] = {
                "type": "object", "propertyNames": {"pattern": wire.PREFETCH_KEY.pattern},
                "additionalProperties": {"anyOf": [
                    {"type": "null"},
                    {"type": "object", "required": ["resourceType"],
                     "properties": {"resourceType": {"type": "string"}}}]}}
    item = schemas["FeedbackItem"]
    item["allOf"] = [
        {"if": {"properties": {"outcome": {"const": "accepted"}}, "required": ["outcome"]},
         "then": {"required": ["acceptedSuggestions"],
                  "properties": {"acceptedSuggestions": {"minItems": 1}},
                  "not": {"required": ["overrideReason"]}}},
        {"if": {"properties": {"outcome": {"const": "overridden"}}, "required": ["outcome"]},
         "then": {"properties": {"acceptedSuggestions": {"maxItems": 0}}}},
    ]
    schemas["OverrideReason"]["anyOf"] = [{"required": ["reason"]},
                                          {"required": ["userComment"]}]
