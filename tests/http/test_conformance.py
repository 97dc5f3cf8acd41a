"""Conformance against data written outside this project (../shared/external, see its SOURCES.md).

Every example hook request is sent to a real server process (gunicorn) at
``bone-muscle-health``; the answer must be a 200 with spec-valid cards, a 412, or a
400 naming the reason, never a 500. Where a request names a ``fhirServer``, it is
pointed at the FHIR test server (tests/fhir_test_server.py) holding exactly the
resources the request itself carries, so what the service fetched can be checked.

Decisions (the table in SOURCES.md, section 7, says "bad" means "bad for the HL7
validator", not necessarily "must be 400"):

* patient-view requests whose ``context.patientId``/``encounterId`` are written
  ``Patient/x`` / ``Encounter/x`` are 400 for us too (the spec wants bare ids, and
  we would otherwise fetch the wrong URL): ``cdshooks-request-patient-view-bad``.
* other validator findings (missing Bundle ``fullUrl``, unknown extensions,
  unresolvable codes, draftOrders content) are about FHIR content of hooks we do not
  answer; every order-select/order-sign request is 400 naming ``hook`` before any
  content is read, good or bad.
* prefetch keys are service-specific. The cql-services requests were written for a
  service whose keys are the resource type names (``Patient``, ``Condition``,
  ``Observation``, ...); we rename each such key to our key that asks for that type
  (from our discovery document) so their prefetch, null and missing cases reach the
  same code paths they test there.
* Responses: the spec's example responses must pass ``wire.ResponseSchema``; the
  validator's bad responses must fail it. Two validator "good" responses fail it on
  CDS Hooks 2.0 grounds the validator's logical model does not check (summary of 140+
  characters, link without ``type``): listed in STRICTER_THAN_VALIDATOR.
"""
from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import requests
import yaml

from cds.fhir import gather as gather_mod
from cds.hooks import wire
from cds.config import Config
from conftest import EXAMPLES, load_json, run_server

pytestmark = pytest.mark.slow

SERVICE = "/cds-services/bone-muscle-health"


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server(fhir, tmp_path_factory, shared_dir):
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url,
           "MSKCDS_FHIR_TOTAL_BUDGET": "3"}
    with run_server(env, tmp_path_factory.mktemp("conformance")) as proc:
        yield proc


@pytest.fixture(scope="module")
def discovery(server) -> dict[str, Any]:
    r = requests.get(server.url("/cds-services"), timeout=5)
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def templates(discovery) -> dict[str, str]:
    return {s["id"]: s for s in discovery["services"]}["bone-muscle-health"]["prefetch"]


@pytest.fixture(autouse=True)
def _clean(fhir):
    fhir.reset()
    yield


def rtype(template: str) -> str:
    return template.split("?", 1)[0].split("/", 1)[0]


def carried_resources(req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for value in (req.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            for e in value.get("entry") or []:
                r = e.get("resource") if isinstance(e, dict) else None
                if isinstance(r, dict) and r.get("resourceType") and r.get("id"):
                    yield r
        elif value.get("resourceType") and value.get("id"):
            yield value


def by_type_keys(req: dict[str, Any], templates: dict[str, str]) -> dict[str, Any]:
    """Rename prefetch keys named after a resource type to our key for that type."""
    req = copy.deepcopy(req)
    prefetch = req.get("prefetch") or {}
    for key, template in templates.items():
        if rtype(template) in prefetch and key not in prefetch:
            prefetch[key] = prefetch.pop(rtype(template))
    return req


def send(server, fhir, req: dict[str, Any]) -> requests.Response:
    """Point fhirServer at the FHIR test server, loaded with what the request carries."""
    req = copy.deepcopy(req)
    if "fhirServer" in req:
        req["fhirServer"] = fhir.base_url
        fhir.load(*carried_resources(req))
    r = requests.post(server.url(SERVICE), json=req, timeout=15)
    assert r.status_code != 500, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    return r


def issues_named(r: requests.Response) -> set[str]:
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert all(i.get("diagnostics") for i in body["issue"])
    return {e for i in body["issue"] for e in i.get("expression", [])}


def assert_valid_cards(r: requests.Response, swagger_response) -> None:
    body = r.json()
    wire.check_outgoing(wire.ResponseSchema(), body, "response")
    swagger_response.validate(body)


# --------------------------------------------------------------------------- Swagger → JSON Schema
#: What CDS Hooks 2.0 changed relative to the 1.0 Swagger file (applied before validating):
SWAGGER_2_0_CHANGES = [
    "Card.selectionBehavior: 2.0 adds 'any' to the enum",
    "Action.description: required in 1.0, optional in 2.0",
    "Card.indicator: the 2.0 example responses omit it (kept required for our own cards)",
    "2.0-only fields (uuid, overrideReasons, systemActions, autolaunchable, resourceId, "
    "extension): the Swagger objects do not forbid extra properties, nothing to change",
]


@pytest.fixture(scope="module")
def swagger(shared_dir) -> dict[str, Any]:
    doc = yaml.safe_load((shared_dir / "cds-hooks-api" / "cds-hooks.yaml").read_text())
    assert doc["swagger"] == "2.0" and doc["info"]["version"] == "1.0"
    defs = copy.deepcopy(doc["definitions"])
    defs["Card"]["properties"]["selectionBehavior"]["enum"].append("any")
    defs["Action"]["required"].remove("description")
    return defs


def swagger_validator(defs: dict[str, Any], name: str):
    schema = {"definitions": defs, "$ref": "#/definitions/" + name.replace(" ", "%20")}
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture(scope="module")
def swagger_response(swagger):
    return swagger_validator(swagger, "CDS Response")


def test_swagger_schema_can_fail(swagger, swagger_response):
    with pytest.raises(jsonschema.ValidationError):
        swagger_response.validate({"cards": [{"indicator": "info", "source": {"label": "x"}}]})
    with pytest.raises(jsonschema.ValidationError):
        swagger_validator(swagger, "CDS Service Information").validate(
            {"services": [{"id": "x", "hook": "patient-view"}]})


def test_our_discovery_matches_swagger_and_wire(discovery, swagger):
    swagger_validator(swagger, "CDS Service Information").validate(discovery)
    wire.check_outgoing(wire.DiscoverySchema(), discovery, "discovery")
    pv = {s["id"]: s for s in discovery["services"]}["bone-muscle-health"]
    assert pv["hook"] == "patient-view"
    assert pv["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_our_cards_match_swagger_and_wire(server, swagger_response):
    """Every example patient in fhir_examples/: our answer validates against both."""
    paths = sorted(EXAMPLES.glob("*.request.json"))
    assert paths
    n_cards = 0
    for path in paths:
        r = requests.post(server.url(SERVICE), json=load_json(path), timeout=15)
        assert r.status_code == 200, (path.name, r.text)
        assert_valid_cards(r, swagger_response)
        n_cards += len(r.json()["cards"])
    assert n_cards, "no cards were produced: the check above would be vacuous"


def test_spec_example_responses_pass_swagger_as_adapted(shared_dir, swagger_response):
    for path in sorted((shared_dir / "cds-hooks-spec").glob("response-*.json")):
        doc = load_json(path)
        for card in doc.get("cards", []):
            card.setdefault("indicator", "info")  # see SWAGGER_2_0_CHANGES
        swagger_response.validate(doc)


# --------------------------------------------------------------------------- responses (schemas)
STRICTER_THAN_VALIDATOR = {
    "cdshooks-response-source-link.json": "summary is 140+ characters; a link has no type",
}


def test_spec_example_responses_pass_our_response_schema(shared_dir):
    paths = sorted((shared_dir / "cds-hooks-spec").glob("response-*.json"))
    assert len(paths) >= 4
    for path in paths:
        assert wire.ResponseSchema().validate(load_json(path)) == {}, path.name


def test_spec_example_actions_pass_our_action_schema(shared_dir):
    for name in ("action-create", "action-update", "action-delete"):
        assert wire.ActionSchema().validate(load_json(shared_dir / "cds-hooks-spec" / f"{name}.json")) == {}


def validator_cases(shared_dir: Path) -> dict[str, tuple[Path, bool]]:
    """name → (file, valid?) from the validator's manifest and its expected outcomes."""
    base = shared_dir / "fhir-test-cases-cdshooks"
    manifest = load_json(base / "manifest-cdshooks.json")
    out: dict[str, tuple[Path, bool]] = {}
    for case in manifest["test-cases"]:
        logical = case.get("logical") or {}
        expected = load_json(base / "outcomes" / "java" / Path(logical["java"]).name) if logical.get("java") else None
        errors = [i for i in (expected or {}).get("issue", []) if i.get("severity") in ("error", "fatal")]
        out[case["name"]] = (base / case["file"], not errors)
    return out


def test_validator_responses(shared_dir):
    cases = {n: c for n, c in validator_cases(shared_dir).items() if "response" in n}
    assert len(cases) >= 9, cases
    # The two unreferenced files in validator/ (SOURCES.md): {} is bad, {"cards": []} good.
    base = shared_dir / "fhir-test-cases-cdshooks"
    cases["empty-bad"] = (base / "cdshooks-response-empty-bad.json", False)
    cases["empty-good"] = (base / "cdshooks-response-empty-good.json", True)
    for name, (path, valid) in cases.items():
        errors = wire.ResponseSchema().validate(load_json(path))
        if not valid:
            assert errors, f"{name}: the validator's bad response passed our schema"
        elif path.name in STRICTER_THAN_VALIDATOR:
            assert errors, f"{name}: expected us to be stricter ({STRICTER_THAN_VALIDATOR[path.name]})"
        else:
            assert errors == {}, f"{name}: {errors}"


def test_spec_and_validator_discovery_documents_pass_our_discovery_schema(shared_dir):
    paths = [shared_dir / "cds-hooks-spec" / "discovery-response.json",
             shared_dir / "cds-hooks-spec" / "discovery-response-with-extension.json",
             shared_dir / "fhir-test-cases-cdshooks" / "cdshooks-services-good.json"]
    for path in paths:
        assert wire.DiscoverySchema().validate(load_json(path)) == {}, path.name


# --------------------------------------------------------------------------- prefetch tokens
def test_spec_prefetch_templates_render(shared_dir):
    templates = load_json(shared_dir / "cds-hooks-spec" / "prefetch-templates.json")["prefetch"]
    ctx = {"patientId": "123", "userId": "PractitionerRole/456"}
    rendered = {k: gather_mod.render(t, ctx) for k, t in templates.items()}
    assert rendered["patient"] == "Patient/123"
    assert rendered["user"] == "PractitionerRole?_id=456"
    assert "{{" not in "".join(rendered.values())
    with pytest.raises(gather_mod.Unavailable):  # a Practitioner user has no PractitionerRole id
        gather_mod.render(templates["user"], {"patientId": "123", "userId": "Practitioner/456"})


def test_spec_token_contexts_against_our_templates(shared_dir, templates):
    simple = load_json(shared_dir / "cds-hooks-spec" / "prefetch-token-context-simple.json")["context"]
    for key, template in templates.items():
        out = gather_mod.render(template, simple)
        assert "{{" not in out and ("123" in out)
    for name in ("prefetch-token-context-draftorders.json",
                 "prefetch-token-context-with-medicationrequestid.json"):
        ctx = load_json(shared_dir / "cds-hooks-spec" / name)["context"]  # no patientId
        for template in templates.values():
            with pytest.raises(gather_mod.Unavailable):
                gather_mod.render(template, ctx)


def test_spec_prefetch_data_satisfies_the_spec_templates_without_fetching(shared_dir):
    templates = load_json(shared_dir / "cds-hooks-spec" / "prefetch-templates.json")["prefetch"]
    data = load_json(shared_dir / "cds-hooks-spec" / "prefetch-data.json")["prefetch"]
    req = {"context": {"patientId": "123", "userId": "PractitionerRole/123"},
           "prefetch": {k: v for k, v in data.items() if isinstance(v, dict)}}
    with pytest.raises(Exception) as err:  # 'user' and 'diabetes-type2' are not in the data
        gather_mod.gather(templates, req, config=Config())
    assert set(err.value.keys) == {"user", "diabetes-type2"}  # type: ignore[attr-defined]
    got = gather_mod.gather({k: templates[k] for k in ("patient", "hemoglobin-a1c")}, req,
                            config=Config())
    assert got.source == {"patient": "prefetch", "hemoglobin-a1c": "prefetch"}
    assert [r["resourceType"] for r in got.resources()] == ["Patient", "Observation"]


# --------------------------------------------------------------------------- requests
def test_spec_patient_view_request(server, fhir, shared_dir, swagger_response):
    req = load_json(shared_dir / "cds-hooks-spec" / "request-patient-view.json")
    r = send(server, fhir, req)
    assert r.status_code == 200, r.text
    assert_valid_cards(r, swagger_response)
    # 'patientToGreet' is not our key: the patient was read from the FHIR server, with the token.
    patient_reads = [a for a in fhir.asked("Patient")]
    assert [a.path for a in patient_reads] == ["/fhir/Patient/1288992"]
    assert patient_reads[0].headers["Authorization"] == "Bearer some-opaque-fhir-access-token"


def test_spec_patient_view_request_as_is_names_fhir_server(server, shared_dir):
    # Its fhirServer is not one this client may use: nothing is fetched from it, and as its
    # prefetch lacks our keys the answer is a 412 naming each key, the reason and the setting.
    req = load_json(shared_dir / "cds-hooks-spec" / "request-patient-view.json")
    r = requests.post(server.url(SERVICE), json=req, timeout=10)
    assert r.status_code == 412, r.text
    assert issues_named(r) and all(e.startswith("prefetch.") for e in issues_named(r))
    for issue in r.json()["issue"]:
        assert "fhirServer is not a FHIR server this client may use" in issue["diagnostics"]
        assert "MSKCDS_ALLOWED_FHIR_SERVERS" in issue["diagnostics"]


def test_spec_request_with_extension_has_no_patient(server, fhir, shared_dir):
    r = send(server, fhir, load_json(shared_dir / "cds-hooks-spec" / "request-with-extension.json"))
    assert r.status_code == 400
    assert issues_named(r) == {"context.patientId"}


@pytest.mark.parametrize("name", ["patient-view-context-example1.json",
                                  "patient-view-context-example2.json"])
def test_library_patient_view_contexts(server, fhir, shared_dir, name, templates):
    context = load_json(shared_dir / "cds-hooks-spec" / "library-v1.0.1" / name)["context"]
    req = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context}
    r = send(server, fhir, req)  # no prefetch, no fhirServer: nothing can be had
    assert r.status_code == 412
    assert issues_named(r) == {f"prefetch.{k}" for k in templates}
    req["fhirServer"] = "set by send()"  # now with a FHIR server that does not know the patient
    r = send(server, fhir, req)
    assert r.status_code == 412
    assert "prefetch.patient" in issues_named(r)
    assert "/fhir/Patient/1288992" in [a.path for a in fhir.asked()]


CQL_INVOCATIONS = ["active_person_invocation.json", "lazy_person_invocation.json",
                   "missing_prefetch_keys_invocation.json", "null_prefetch_values_invocation.json"]


@pytest.mark.parametrize("name", CQL_INVOCATIONS)
def test_cql_invocations_take_the_prefetch_fallback_and_null_paths(server, fhir, shared_dir,
                                                                   name, templates):
    original = load_json(shared_dir / "cql-services" / "fixtures" / "hooks-patients" / "R4" / name)
    req = by_type_keys(original, templates)
    r = send(server, fhir, req)
    # Their Patient (id 1) is not the context patient (1288992), which the FHIR server does
    # not hold either: the patient key is refetched and cannot be had → 412.
    assert r.status_code == 412, r.text
    assert "prefetch.patient" in issues_named(r)
    sent = original["prefetch"]
    asked_types = sorted(a.resource_type for a in fhir.asked())
    expected = sorted({"Patient"} | {rtype(t) for k, t in templates.items()
                                     if k != "patient" and rtype(t) not in sent})
    assert asked_types == expected, (name, asked_types)
    for a in fhir.asked():
        assert a.headers["Authorization"] == "Bearer some-opaque-fhir-access-token"
        assert a.path == "/fhir/Patient/1288992" or a.query.get("patient") == ["1288992"]
    if name.startswith("null_"):  # null means "no data": never fetched
        nulls = {t for t, v in sent.items() if v is None}
        assert nulls and not nulls & set(asked_types)
    if name.startswith("missing_"):  # Condition absent → fetched when we declare a Condition key
        declared = {rtype(t) for t in templates.values()}
        assert ("Condition" in asked_types) == ("Condition" in declared)


def test_cql_null_and_missing_paths_with_the_full_template_set(fhir, shared_dir):
    """The same two invocations through gather() with all four of our kinds of key, so the
    null and fallback paths are proven whatever the rules declare today."""
    templates = {"patient": "Patient/{{context.patientId}}",
                 "observations": "Observation?patient={{context.patientId}}&_sort=-date",
                 "conditions": "Condition?patient={{context.patientId}}",
                 "medications": "MedicationRequest?patient={{context.patientId}}"}
    base = shared_dir / "cql-services" / "fixtures" / "hooks-patients" / "R4"
    fhir.load({"resourceType": "Patient", "id": "1288992"})
    for name, expect_asked in (("missing_prefetch_keys_invocation.json", ["Condition", "MedicationRequest", "Patient"]),
                               ("null_prefetch_values_invocation.json", ["MedicationRequest", "Patient"])):
        fhir.reset(keep_resources=True)
        req = by_type_keys(load_json(base / name), templates)
        req["fhirServer"] = fhir.base_url
        got = gather_mod.gather(templates, req, config=Config())
        assert sorted(a.resource_type for a in fhir.asked()) == expect_asked
        assert got.source["patient"] == "fhir"  # their Patient/1 is not patient 1288992
        if name.startswith("null_"):
            assert got.source["observations"] == got.source["conditions"] == "null"
        else:
            assert got.source["observations"] == "prefetch" and got.source["conditions"] == "fhir"


SYNTHEA = ["Adolfo777_Braun514.json", "Adrian111_Wunsch504.json", "Cher186_Crooks415.json",
           "Debora709_Mayer370.json", "unhealthy_patient.json"]


@pytest.mark.parametrize("name", SYNTHEA)
def test_cql_synthea_requests(server, fhir, shared_dir, name, templates, swagger_response):
    original = load_json(shared_dir / "cql-services" / "examples" / "hooks" / "R4" / name)
    req = by_type_keys(original, templates)
    r = send(server, fhir, req)
    patient = original["prefetch"]["Patient"]
    if patient["id"] == original["context"]["patientId"]:
        # unhealthy_patient.json: consistent, every key we declare is supplied.
        assert r.status_code == 200, r.text
        assert_valid_cards(r, swagger_response)
        missing = {rtype(t) for t in templates.values()} - set(original["prefetch"])
        assert sorted(a.resource_type for a in fhir.asked()) == sorted(missing)
    else:
        # The four Synthea patients: context patientId "2-1", Patient ids are UUIDs.
        assert r.status_code == 412, r.text
        assert "prefetch.patient" in issues_named(r)
        assert f"/fhir/Patient/{original['context']['patientId']}" in [a.path for a in fhir.asked()]


VALIDATOR_REQUESTS = {
    # file (under fhir-test-cases-cdshooks/) → (status, expression named)
    "cdshooks-request-pv-good.json": (200, None),
    "cdshooks/cdshooks-request-patient-view-good.json": (200, None),
    "cdshooks/cdshooks-request-patient-view-bad.json": (400, "context.patientId"),
    "cdshooks/cdshooks-request-order-select-good.json": (400, "hook"),
    "cdshooks/cdshooks-request-order-select-bad.json": (400, "hook"),
    "cdshooks/cdshooks-request-order-select-extensions.json": (400, "hook"),
    "cdshooks/cdshooks-request-order-sign-good.json": (400, "hook"),
    "cdshooks/cdshooks-request-order-sign-bad-1.json": (400, "hook"),
    "cdshooks/cdshooks-request-order-sign-bad-2.json": (400, "hook"),
}


def test_validator_request_table_is_complete(shared_dir):
    base = shared_dir / "fhir-test-cases-cdshooks"
    on_disk = {str(p.relative_to(base)) for p in base.rglob("*request*.json") if "outcomes" not in p.parts}
    assert on_disk == set(VALIDATOR_REQUESTS)
    for name, (path, valid) in validator_cases(shared_dir).items():
        rel = str(path.relative_to(base))
        if rel in VALIDATOR_REQUESTS and VALIDATOR_REQUESTS[rel][0] == 200:
            assert valid, f"we accept {rel}, which the validator calls bad"


@pytest.mark.parametrize("rel", sorted(VALIDATOR_REQUESTS))
def test_validator_requests(server, fhir, shared_dir, rel, swagger_response):
    status, expression = VALIDATOR_REQUESTS[rel]
    r = send(server, fhir, load_json(shared_dir / "fhir-test-cases-cdshooks" / rel))
    assert r.status_code == status, r.text
    if status == 200:
        assert_valid_cards(r, swagger_response)
    else:
        assert expression in issues_named(r)


@pytest.mark.parametrize("name", ["appointment_book", "encounter_discharge", "encounter_start",
                                  "fancy_structure", "order_dispatch", "order_select", "order_sign"])
def test_inferno_other_hooks_are_400_naming_hook(server, fhir, shared_dir, name):
    req = load_json(shared_dir / "inferno-crd" / "fixtures" / f"{name}_hook_request.json")
    assert "prefetch" not in req
    r = send(server, fhir, req)
    assert r.status_code == 400
    assert issues_named(r) == {"hook"}
    assert fhir.asked() == []


def test_inferno_response_fixture_passes_our_schema(shared_dir):
    doc = load_json(shared_dir / "inferno-crd" / "fixtures" / "crd_authorization_hook_response.json")
    assert wire.ResponseSchema().validate(doc) == {}
