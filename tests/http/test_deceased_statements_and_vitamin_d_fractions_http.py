"""Through a real gunicorn server: a deceased patient gets no cards, MedicationStatement is
read from its own prefetch key, and 25(OH)D fractions are added (real HTTP, no stubs)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

PATIENT = "issue9-http-1"


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r} for r in resources]}


def obs(rid: str, code: str, value: float, unit: str) -> dict[str, Any]:
    when = (datetime.now(timezone.utc) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit}}


def call(server, patient: dict[str, Any], observations=(), statements=()) -> list[dict[str, Any]]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/x", "patientId": PATIENT},
            "prefetch": {"patient": patient, "observations": searchset(*observations),
                         "conditions": searchset(), "medications": searchset(),
                         "medicationStatements": searchset(*statements), "diagnosticReports": searchset()}}
    r = requests.post(f"{server.base_url}/cds-services/bone-muscle-health", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def topics(cards) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]


def person(**extra) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PATIENT, "gender": "male", "birthDate": "1975-05-06", **extra}


@pytest.fixture(scope="module")
def server(open_server):
    return open_server


def test_deceased_patient_gets_an_empty_card_list(server):
    deficient = [obs("v1", "62292-8", 9, "ng/mL")]
    assert topics(call(server, person(), deficient)) == ["vitamin-d-deficiency"]
    assert call(server, person(deceasedDateTime="2026-01-02"), deficient) == []
    assert call(server, person(deceasedBoolean=True), deficient) == []


def test_d3_alone_with_ergocalciferol_statement_makes_no_card(server):
    d3_only = [obs("v3", "1989-3", 10, "ng/mL")]
    assert topics(call(server, person(), d3_only)) == ["vitamin-d-deficiency"]
    ergo = {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
            "subject": {"reference": f"Patient/{PATIENT}"},
            "medicationCodeableConcept": {"text": "Ergocalciferol 50,000 unit capsule"}}
    assert call(server, person(), d3_only, [ergo]) == []


def test_d2_plus_d3_is_read_as_the_total(server):
    # ES 2011 deficiency < 20 ng/mL: D3 10 + D2 30 = 40 is not deficient; D3 10 + D2 5 = 15 is
    assert call(server, person(), [obs("a", "1989-3", 10, "ng/mL"), obs("b", "49054-0", 30, "ng/mL")]) == []
    cards = call(server, person(), [obs("a", "1989-3", 10, "ng/mL"), obs("b", "49054-0", 5, "ng/mL")])
    assert topics(cards) == ["vitamin-d-deficiency"]
    assert "15" in cards[0]["summary"]
