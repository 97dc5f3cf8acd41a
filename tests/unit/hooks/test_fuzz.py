"""Bad input never gets a 500: property-based tests (hypothesis) on the service endpoint.

Volume runs through the Flask test client; a smaller run goes to a real gunicorn
process. Every answer is either a 200 whose body is a spec-valid CDS Hooks response,
or a 4xx whose body is an OperationOutcome with at least one issue.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds import create_app
from cds.hooks import wire

SERVICE = "/cds-services/bone-muscle-health"
PATIENT = "fz-1"
# Real LOINC codes, named in ../shared/external/SOURCES.md: 25-OH vitamin D (1989-3, 62292-8,
# 14635-7), DXA T-score (38265-5, 80946-7), Z-score (80938-4), BMD (46278-8, 24701-5),
# height (8302-2), weight (29463-7), BMI (39156-5).
LOINC_CODES = ["1989-3", "62292-8", "14635-7", "38265-5", "80946-7", "80938-4", "46278-8",
               "24701-5", "8302-2", "29463-7", "39156-5"]
SYSTEMS = ["http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org", "", "urn:x"]
UNITS = ["ng/mL", "nmol/L", "g/cm2", "g/cm-2", "{T-score}", "1", "kg", "cm", "[in_i]", "m/s",
         "kg/m2", "%", "", "furlongs"]

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- strategies
scalars = (st.none() | st.booleans() | st.integers(min_value=-10**12, max_value=10**12)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=15)
dates = st.sampled_from(["2024-01-02", "2024-01-02T10:00:00Z", "1899-12-31", "3000-01-01",
                         "2024-13-45", "yesterday", "", "2024", "2024-02"]) | st.text(max_size=12)
numbers = (st.floats(allow_nan=False, allow_infinity=False, width=32)
           | st.integers(min_value=-10**6, max_value=10**6) | st.text(max_size=6) | st.none())
codings = st.fixed_dictionaries({}, optional={
    "system": st.sampled_from(SYSTEMS), "code": st.sampled_from(LOINC_CODES) | st.text(max_size=8),
    "display": st.text(max_size=10)})
concepts = st.fixed_dictionaries({}, optional={"coding": st.lists(codings, max_size=3) | json_values,
                                               "text": st.text(max_size=10)})
quantities = st.fixed_dictionaries({}, optional={
    "value": numbers, "unit": st.sampled_from(UNITS), "code": st.sampled_from(UNITS),
    "system": st.sampled_from(SYSTEMS), "comparator": st.sampled_from(["<", ">", "<=", "~", "?"])})
subjects = st.sampled_from([f"Patient/{PATIENT}", "Patient/other", "Group/1", "", PATIENT]).map(
    lambda ref: {"reference": ref}) | json_values

observations = st.fixed_dictionaries(
    {"resourceType": st.just("Observation")},
    optional={"id": st.text(max_size=8), "status": st.sampled_from(
        ["final", "amended", "preliminary", "entered-in-error", "cancelled", "weird"]),
        "code": concepts, "subject": subjects, "effectiveDateTime": dates,
        "effectivePeriod": st.fixed_dictionaries({}, optional={"start": dates, "end": dates}),
        "issued": dates, "valueQuantity": quantities, "valueString": st.text(max_size=10),
        "valueCodeableConcept": concepts, "dataAbsentReason": concepts,
        "interpretation": st.lists(concepts, max_size=2), "bodySite": concepts,
        "component": st.lists(st.fixed_dictionaries({"code": concepts},
                                                    optional={"valueQuantity": quantities}), max_size=3),
        "category": st.lists(concepts, max_size=2) | json_values})
conditions = st.fixed_dictionaries(
    {"resourceType": st.just("Condition")},
    optional={"id": st.text(max_size=8), "code": concepts, "subject": subjects,
              "clinicalStatus": concepts, "verificationStatus": concepts, "onsetDateTime": dates,
              "recordedDate": dates, "abatementDateTime": dates})
medications = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["MedicationRequest", "MedicationStatement"])},
    optional={"id": st.text(max_size=8), "status": st.sampled_from(["active", "stopped", "x"]),
              "medicationCodeableConcept": concepts, "subject": subjects, "authoredOn": dates,
              "dosageInstruction": json_values})
patients = st.fixed_dictionaries(
    {"resourceType": st.just("Patient")},
    optional={"id": st.sampled_from([PATIENT, "other", ""]) | st.text(max_size=5),
              "gender": st.sampled_from(["female", "male", "other", "unknown", "", "f"]),
              "birthDate": dates, "deceasedBoolean": st.booleans()})
odd_resources = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["OperationOutcome", "Bundle", "Basic", "Procedure", ""])},
    optional={"id": st.text(max_size=5), "entry": json_values, "link": json_values})
resources = observations | conditions | medications | patients | odd_resources


def bundle_of(items: st.SearchStrategy) -> st.SearchStrategy:
    entries = st.lists(st.fixed_dictionaries({"resource": items}, optional={
        "search": st.fixed_dictionaries({"mode": st.sampled_from(["match", "include", "outcome"])}),
        "fullUrl": st.text(max_size=10)}) | json_values, max_size=6)
    return st.fixed_dictionaries({"resourceType": st.just("Bundle")}, optional={
        "type": st.sampled_from(["searchset", "collection", "x"]), "entry": entries,
        "total": st.integers(-1, 10)})


prefetch_values = st.none() | resources | bundle_of(resources) | json_values
prefetches = st.fixed_dictionaries({}, optional={
    "patient": st.none() | patients | resources | json_values,
    "observations": st.none() | bundle_of(observations | resources) | prefetch_values,
    "conditions": st.none() | bundle_of(conditions | resources) | prefetch_values,
    "medications": st.none() | bundle_of(medications | resources) | prefetch_values,
    "medicationStatements": st.none() | bundle_of(medications | resources) | prefetch_values,
    "diagnosticReports": st.none() | bundle_of(resources) | prefetch_values,
    "extra-key": prefetch_values}) | json_values


def valid_request() -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/fz", "patientId": PATIENT},
            "prefetch": {"patient": {"resourceType": "Patient", "id": PATIENT},
                         "observations": None, "conditions": None, "medications": None,
                         "medicationStatements": None, "diagnosticReports": None}}


TOP_LEVEL = ["hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "prefetch",
             "extension", "other"]


@st.composite
def envelopes(draw: st.DrawFn) -> Any:
    body = valid_request()
    body["prefetch"] = draw(prefetches)
    for _ in range(draw(st.integers(0, 3))):
        field = draw(st.sampled_from(TOP_LEVEL))
        action = draw(st.sampled_from(["delete", "replace", "context"]))
        if action == "delete":
            body.pop(field, None)
        elif action == "replace":
            body[field] = draw(json_values | st.sampled_from(
                ["patient-view", "order-sign", "", "http://127.0.0.1:1/fhir", "javascript:x"]))
        elif isinstance(body.get("context"), dict):
            key = draw(st.sampled_from(["userId", "patientId", "encounterId", "x"]))
            body["context"][key] = draw(json_values | st.sampled_from(
                ["Patient/1", "Practitioner/1", "a b", "../x", "x" * 70, "%2e%2e"]))
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)  # not even an object
    return body


# --------------------------------------------------------------------------- checks
def check_answer(status: int, body: Any) -> None:
    assert status != 500, body
    if status == 200:
        assert wire.ResponseSchema().validate(body) == {}, body
        wire.check_outgoing(wire.ResponseSchema(), body, "response")
    else:
        assert 400 <= status < 500, (status, body)
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"] and all(i.get("diagnostics") for i in body["issue"]), body


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app({"require_auth": False, "database_url": f"sqlite:///{tmp / 'fuzz.sqlite3'}",
                      "allowed_fhir_servers": "", "max_body_bytes": 200_000})
    return app.test_client()


# --------------------------------------------------------------------------- in-process volume
@SETTINGS
@given(envelopes())
def test_malformed_envelopes_and_resources_never_500(client, body):
    r = client.post(SERVICE, data=json.dumps(body), content_type="application/json")
    check_answer(r.status_code, r.get_json())


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_400(client, raw):
    r = client.post(SERVICE, data=raw, content_type="application/json")
    check_answer(r.status_code, r.get_json())
    assert r.status_code == 400


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                        "application/xml", "", "application/jsonx", "text/json"]), envelopes())
def test_wrong_content_type_is_415(client, ctype, body):
    r = client.post(SERVICE, data=json.dumps(body), headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code == 415
    check_answer(r.status_code, r.get_json())


@pytest.mark.parametrize("raw", [
    b"NaN", b'{"hook": NaN}', b'{"a": Infinity}', b"-Infinity", b'{"x": 1e999}',
    b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"\xff\xfe{}", b'{"hook": "patient-view"', b"", b"null", b"[]", b'"text"',
    '{"hook": "patient-view", "x": "\ud800"}'.encode("utf-8", "surrogatepass"),
    json.dumps(valid_request()).replace('"observations": null', '"observations": NaN').encode(),
    json.dumps(valid_request()).replace('"observations": null', '"observations": 1e400').encode(),
])
def test_odd_json_is_400(client, raw):
    r = client.post(SERVICE, data=raw, content_type="application/json")
    assert r.status_code == 400, r.data[:200]
    check_answer(r.status_code, r.get_json())


def test_deeply_nested_but_parseable_prefetch_is_not_500(client):
    deep: Any = {"resourceType": "Observation", "id": "x"}
    for _ in range(250):  # ~750 JSON levels: parseable, deeper than any real Bundle
        deep = {"resourceType": "Bundle", "entry": [{"resource": deep}]}
    body = valid_request()
    body["prefetch"]["observations"] = deep
    r = client.post(SERVICE, data=json.dumps(body), content_type="application/json")
    check_answer(r.status_code, r.get_json())


def test_body_over_the_limit_is_413(client):
    body = valid_request()
    body["extension"] = {"pad": "x" * 200_001}
    r = client.post(SERVICE, data=json.dumps(body), content_type="application/json")
    assert r.status_code == 413
    check_answer(r.status_code, r.get_json())


# --------------------------------------------------------------------------- real server
@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(envelopes())
def test_real_server_never_500(open_server, body):
    r = requests.post(open_server.url(SERVICE), data=json.dumps(body),
                      headers={"Content-Type": "application/json"}, timeout=10)
    check_answer(r.status_code, r.json())


@pytest.mark.slow
def test_real_server_edges(open_server):
    url = open_server.url(SERVICE)
    from cds.config import Config

    over_default = Config().max_body_bytes + 1  # the embedded default limit, one byte over
    big = json.dumps({**valid_request(), "extension": {"pad": "x" * over_default}})
    r = requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(url, data=json.dumps(valid_request()), headers={"Content-Type": "text/plain"},
                      timeout=10)
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(url, data=b"{nope", headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(url, data=b"[" * 100000, headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    ok = requests.post(url, json=valid_request(), timeout=10)
    assert ok.status_code == 200  # the worker survived all of the above
    check_answer(ok.status_code, ok.json())


# --------------------------------------------------------------------------- FHIR server answers
@pytest.fixture(scope="module")
def fallback_client(tmp_path_factory, fhir):
    tmp = tmp_path_factory.mktemp("fuzz-fhir")
    app = create_app({"require_auth": False, "database_url": f"sqlite:///{tmp / 'f.sqlite3'}",
                      "allowed_fhir_servers": fhir.base_url, "fhir_total_budget": 3.0})
    return app.test_client()


fhir_answers = st.one_of(
    bundle_of(resources).map(lambda b: (200, json.dumps(b).encode())),
    resources.map(lambda r: (200, json.dumps(r).encode())),
    json_values.map(lambda v: (200, json.dumps(v).encode())),
    st.binary(max_size=50).map(lambda b: (200, b)),
    st.sampled_from([301, 302, 400, 401, 403, 404, 410, 429, 500, 503]).map(lambda s: (s, b"{}")),
    st.builds(lambda page, link: (200, json.dumps({**page, "link": link}).encode()),
              bundle_of(resources), st.lists(st.fixed_dictionaries(
                  {"relation": st.sampled_from(["next", "self", "previous"]),
                   "url": st.sampled_from(["http://127.0.0.1:9/fhir/x", "Observation?page=2",
                                           "", "javascript:x", "http://evil\\@127.0.0.1/fhir"])
                   | st.text(max_size=20)}), max_size=2)),
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["Patient", "Observation", "Condition", "MedicationRequest"]),
                       fhir_answers, min_size=4, max_size=4))
def test_whatever_the_fhir_server_answers_never_500(fallback_client, fhir, answers):
    def answer(path, query):
        rtype = path.split("/fhir/", 1)[-1].split("/", 1)[0]
        status, body = answers.get(rtype, (404, b"{}"))
        headers = {"Location": "http://127.0.0.1:9/elsewhere"} if status in (301, 302) else {}
        return status, headers, body

    fhir.reset()
    fhir.override = answer
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": fhir.base_url,
            "context": {"userId": "Practitioner/fz", "patientId": PATIENT}, "prefetch": {}}
    r = fallback_client.post(SERVICE, data=json.dumps(body), content_type="application/json")
    check_answer(r.status_code, r.get_json())
    assert r.status_code in (200, 412), r.get_json()
