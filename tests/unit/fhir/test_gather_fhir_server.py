"""The FHIR test server answers the searches the service makes the way a FHIR server does.

(The fallback tests are only as good as this server, so it is tested on its own.)
"""
from __future__ import annotations

import time

import pytest
import requests


LOINC = "http://loinc.org"


def obs(oid: str, code: str, day: int, pid: str = "p1", system: str = LOINC) -> dict:
    return {"resourceType": "Observation", "id": oid, "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": system, "code": code}]},
            "effectiveDateTime": f"2024-02-{day:02d}"}


@pytest.fixture(autouse=True)
def _data(fhir):
    fhir.reset()
    # 1989-3: 25-OH vitamin D; 38265-5: DXA T-score; 8302-2: body height (LOINC)
    fhir.load({"resourceType": "Patient", "id": "p1"},
              obs("a", "1989-3", 1), obs("b", "38265-5", 3), obs("c", "8302-2", 2),
              obs("d", "1989-3", 4, pid="p2"), obs("e", "1989-3", 5, system="urn:other"))
    yield


def ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def get(fhir, path: str, **params) -> requests.Response:
    return requests.get(fhir.base_url + path, params=params, timeout=5)


def test_read_and_404(fhir):
    assert get(fhir, "/Patient/p1").json()["id"] == "p1"
    r = get(fhir, "/Patient/nobody")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_search_by_patient_code_or_and_sort(fhir):
    r = get(fhir, "/Observation", patient="p1", code=f"{LOINC}|1989-3,{LOINC}|38265-5", _sort="-date")
    assert r.status_code == 200
    assert ids(r.json()) == ["b", "a"]
    assert ids(get(fhir, "/Observation", patient="Patient/p1", _sort="date").json()) == ["a", "c", "b", "e"]


def test_code_without_system_matches_any_system(fhir):
    assert sorted(ids(get(fhir, "/Observation", code="1989-3").json())) == ["a", "d", "e"]
    assert ids(get(fhir, "/Observation", code="urn:other|1989-3").json()) == ["e"]


def test_paging_with_next_links(fhir):
    fhir.max_count = 2
    r = get(fhir, "/Observation", patient="p1", _sort="-date", _count="50").json()
    assert ids(r) == ["e", "b"]  # newest first, capped at 2 per page
    nxt = [link["url"] for link in r["link"] if link["relation"] == "next"]
    assert len(nxt) == 1 and nxt[0].startswith(fhir.base_url)
    page2 = requests.get(nxt[0], timeout=5).json()
    assert ids(page2) == ["c", "a"] and not [x for x in page2["link"] if x["relation"] == "next"]
    assert page2["total"] == 4


def test_bearer_token_check(fhir):
    fhir.token = "s3cret"
    assert get(fhir, "/Patient/p1").status_code == 401
    r = requests.get(fhir.base_url + "/Patient/p1", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert r.status_code == 401
    r = requests.get(fhir.base_url + "/Patient/p1", headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert r.status_code == 200
    assert fhir.asked()[-1].headers["Authorization"] == "Bearer s3cret"


def test_error_and_slow_modes_and_the_record(fhir):
    fhir.fail_status = 503
    assert get(fhir, "/Patient/p1").status_code == 503
    fhir.fail_status = None
    fhir.delay = 0.3
    started = time.monotonic()
    assert get(fhir, "/Patient/p1").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert [(a.path, a.resource_type) for a in fhir.asked()] == [("/fhir/Patient/p1", "Patient")] * 2
