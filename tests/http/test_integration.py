"""The service as deployed: a real gunicorn process, real HTTP, and a real FHIR test server
for the fallback path (absent keys, paging, null, OperationOutcome, slow, failing, none)."""
from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from conftest import run_server
from fhir_test_server import outcome, searchset

pytestmark = pytest.mark.slow

SERVICE = "/cds-services/bone-muscle-health"
TOKEN = "fhir-token-" + uuid.uuid4().hex
PATIENT_ID = "itest-" + uuid.uuid4().hex[:8]
BUDGET = 1.5


@pytest.fixture(scope="module")
def server(fhir, tmp_path_factory):
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url,
           "MSKCDS_FHIR_CONNECT_TIMEOUT": "0.5", "MSKCDS_FHIR_READ_TIMEOUT": "1.0",
           "MSKCDS_FHIR_TOTAL_BUDGET": str(BUDGET)}
    with run_server(env, tmp_path_factory.mktemp("integration")) as proc:
        yield proc


@pytest.fixture(scope="module")
def templates(server) -> dict[str, str]:
    r = requests.get(server.url("/cds-services"), timeout=5)
    assert r.status_code == 200
    return {s["id"]: s for s in r.json()["services"]}["bone-muscle-health"]["prefetch"]


@pytest.fixture(autouse=True)
def _clean(fhir, foreign):
    fhir.reset()
    foreign.reset()
    yield


def rtype(template: str) -> str:
    return template.split("?", 1)[0].split("/", 1)[0]


def search_keys(templates: dict[str, str]) -> list[str]:
    return [k for k, t in templates.items() if "?" in t]


def patient() -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT_ID, "gender": "female", "birthDate": "1948-05-01"}


def resource_of(template: str, rid: str, day: int = 1) -> dict[str, Any]:
    """A minimal resource the search ``template`` matches (its first ``code``, if it has one)."""
    rt = rtype(template)
    out: dict[str, Any] = {"resourceType": rt, "id": rid, "subject": {"reference": f"Patient/{PATIENT_ID}"}}
    codes = parse_qs(template.split("?", 1)[1]).get("code") if "?" in template else None
    if codes:
        system, _, code = codes[0].split(",")[0].rpartition("|")
        out["code"] = {"coding": [{"system": system, "code": code} if system else {"code": code}]}
    if rt == "Observation":
        out.update(status="final", effectiveDateTime=f"2023-03-{day:02d}")
    return out


def call(server, prefetch: dict[str, Any] | None, fhir_server: str | None = None,
         token: str | None = TOKEN, timeout: float = 15) -> requests.Response:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/it-1", "patientId": PATIENT_ID}}
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server:
        body["fhirServer"] = fhir_server
        if token:
            body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer",
                                         "expires_in": 300, "scope": "patient/*.read",
                                         "subject": "it-ehr"}
    return requests.post(server.url(SERVICE), json=body, timeout=timeout)


def expressions(resp: requests.Response) -> set[str]:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome"
    return {e for issue in body["issue"] for e in issue.get("expression", [])}


# --------------------------------------------------------------------------- fallback
def test_absent_keys_are_fetched_with_the_bearer_token(server, fhir, templates):
    fhir.token = TOKEN
    fhir.load(patient())
    r = call(server, {}, fhir.base_url)
    assert r.status_code == 200, r.text
    assert "cards" in r.json()
    asked = fhir.asked()
    assert sorted(a.resource_type for a in asked) == sorted(rtype(t) for t in templates.values())
    assert all(a.headers.get("Authorization") == f"Bearer {TOKEN}" for a in asked)
    assert f"/fhir/Patient/{PATIENT_ID}" in [a.path for a in asked]
    for key in search_keys(templates):  # every search is the rendered template, in large pages
        template_query = parse_qs(templates[key].split("?", 1)[1])
        sent = next(a for a in asked if a.resource_type == rtype(templates[key]))
        assert sent.query["patient"] == [PATIENT_ID]
        assert set(sent.query) == set(template_query) | {"_count"}
        assert sent.query["_count"] == ["1000"]  # MSKCDS_FHIR_PAGE_SIZE's default
        for name, values in template_query.items():
            if name not in ("patient", "_count"):
                assert sent.query[name] == values, name


def test_wrong_fhir_token_is_412(server, fhir, templates):
    fhir.token = "another-token"
    fhir.load(patient())
    r = call(server, {}, fhir.base_url)
    assert r.status_code == 412, r.text
    assert expressions(r) == {f"prefetch.{k}" for k in templates}


def test_paging_through_the_service(server, fhir, templates):
    keys = search_keys(templates)
    if not keys:
        pytest.skip("discovery declares no search template yet (rules declare only 'patient')")
    key = keys[0]
    rt = rtype(templates[key])
    fhir.max_count = 3
    fhir.load(patient(), *[resource_of(templates[key], f"page-{i}", day=i + 1) for i in range(8)])
    prefetch = {k: None for k in templates if k not in ("patient", key)}
    r = call(server, {"patient": patient(), **prefetch}, fhir.base_url)
    assert r.status_code == 200, r.text
    pages = fhir.asked(rt)
    assert len(pages) == 3  # 3 + 3 + 2
    assert [p.query.get("_offset") for p in pages] == [None, ["3"], ["6"]]


def test_null_prefetch_is_not_fetched(server, fhir, templates):
    prefetch = {k: None for k in templates}
    prefetch["patient"] = patient()
    r = call(server, prefetch, fhir.base_url)
    assert r.status_code == 200, r.text
    assert fhir.asked() == []


def test_complete_prefetch_needs_no_fhir_server(server, fhir, templates):
    prefetch: dict[str, Any] = {k: searchset([]) for k in search_keys(templates)}
    prefetch["patient"] = patient()
    r = call(server, prefetch)
    assert r.status_code == 200, r.text


def test_operation_outcome_prefetch_is_fetched_again(server, fhir, templates):
    fhir.load(patient())
    prefetch: dict[str, Any] = {k: None for k in templates}
    prefetch["patient"] = outcome("too-costly", "the EHR could not prefetch this")
    r = call(server, prefetch, fhir.base_url)
    assert r.status_code == 200, r.text
    assert [a.path for a in fhir.asked()] == [f"/fhir/Patient/{PATIENT_ID}"]


def test_unknown_patient_is_412(server, fhir, templates):
    prefetch = {k: None for k in templates if k != "patient"}
    r = call(server, prefetch, fhir.base_url)
    assert r.status_code == 412
    assert expressions(r) == {"prefetch.patient"}


# --------------------------------------------------------------------------- failures
def test_slow_server_gives_412_within_the_budget(server, fhir, templates):
    fhir.load(patient())
    fhir.delay = 4.0
    started = time.monotonic()
    r = call(server, {}, fhir.base_url)
    elapsed = time.monotonic() - started
    assert r.status_code == 412, r.text
    assert expressions(r) == {f"prefetch.{k}" for k in templates}
    assert elapsed < BUDGET + 0.75, f"412 took {elapsed:.2f}s with a {BUDGET}s budget"


def test_error_server_gives_412_naming_the_keys(server, fhir, templates):
    fhir.fail_status = 500
    searches = search_keys(templates)
    prefetch: dict[str, Any] = {"patient": patient()} if searches else {}
    r = call(server, prefetch, fhir.base_url)
    missing = set(searches) if searches else {"patient"}
    assert r.status_code == 412, r.text
    assert expressions(r) == {f"prefetch.{k}" for k in missing}
    assert all("500" in i["diagnostics"] for i in r.json()["issue"])


def test_no_fhir_server_and_missing_keys_is_412(server, fhir, templates):
    r = call(server, {})
    assert r.status_code == 412
    assert expressions(r) == {f"prefetch.{k}" for k in templates}
    assert fhir.asked() == []


def test_fhir_server_not_allowed_is_412_and_nothing_is_sent(server, foreign, templates):
    foreign.load(patient())
    r = call(server, {}, foreign.base_url)
    assert r.status_code == 412
    assert expressions(r) == {f"prefetch.{k}" for k in templates}
    assert all("not a FHIR server this client may use" in i["diagnostics"]
               for i in r.json()["issue"])
    assert foreign.asked() == []


def test_fhir_server_not_allowed_is_ignored_when_the_prefetch_is_complete(server, foreign,
                                                                          templates):
    foreign.load(patient())
    prefetch = {k: None for k in templates if k != "patient"}
    prefetch["patient"] = patient()
    r = call(server, prefetch, foreign.base_url)
    assert r.status_code == 200, r.text
    assert foreign.asked() == []


def test_redirect_off_origin_is_not_followed_by_the_service(server, fhir, foreign, templates):
    foreign.load(patient())
    fhir.override = lambda path, q: (302, {"Location": foreign.base_url + path}, b"")
    r = call(server, {k: None for k in templates if k != "patient"}, fhir.base_url)
    assert r.status_code == 412
    assert foreign.asked() == []


def test_paged_prefetch_with_foreign_next_link_is_not_followed(server, fhir, foreign, templates):
    keys = search_keys(templates)
    if not keys:
        pytest.skip("discovery declares no search template yet (rules declare only 'patient')")
    key = keys[0]
    page = searchset([resource_of(templates[key], "first")],
                     next_url=f"{foreign.base_url}/{rtype(templates[key])}?page=2")
    prefetch = {k: None for k in templates}
    prefetch.update(patient=patient(), **{key: page})
    r = call(server, prefetch, fhir.base_url)
    assert r.status_code == 412
    assert expressions(r) == {f"prefetch.{key}"}
    assert foreign.asked() == [] and fhir.asked() == []


def test_tokens_and_patient_ids_never_reach_the_log(server):
    # Runs last in this module: every call above has been logged by now.
    time.sleep(0.2)
    text = server.log_text()
    assert '"logger":"mskcds.access"' in text.replace(" ", "")
    assert TOKEN not in text
    assert PATIENT_ID not in text
