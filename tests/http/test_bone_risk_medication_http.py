"""Through a real gunicorn server: bone-risk-medication from a MedicationStatement (its own
prefetch key) and a MedicationRequest, with the ACR 2022 dose and duration edges, a recent DXA,
and a dosage that is not valid FHIR (200, no card, never an error). Real HTTP, no stubs."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

PATIENT = "bone-med-http-1"
UCUM = "http://unitsofmeasure.org"


def day(days_ago: int) -> str:
    return (datetime.now(timezone.utc).date() - timedelta(days=days_ago)).isoformat()


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r} for r in resources]}


def dose(mg: Any) -> list[dict[str, Any]]:
    return [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
             "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}]}]


def prednisone_statement(mg: Any, started_days_ago: int) -> dict[str, Any]:
    return {"resourceType": "MedicationStatement", "id": "ms-pred", "status": "active",
            "subject": {"reference": f"Patient/{PATIENT}"},
            "medicationCodeableConcept": {"text": "Prednisone 5 mg tablet"},
            "effectivePeriod": {"start": day(started_days_ago)}, "dosage": dose(mg)}


def dxa(days_ago: int) -> dict[str, Any]:
    # LOINC 38267-1 DXA lumbar spine T-score (rules/valuesets.yaml t-score, VSAC 113.12.1051)
    return {"resourceType": "Observation", "id": "dxa-1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "38267-1"}]},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": day(days_ago),
            "valueQuantity": {"value": -0.4, "system": UCUM, "code": "{T-score}"}}


def call(server, statements=(), requests_=(), observations=()) -> list[dict[str, Any]]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/x", "patientId": PATIENT},
            "prefetch": {"patient": {"resourceType": "Patient", "id": PATIENT, "gender": "male",
                                     "birthDate": "1971-05-06"},
                         "observations": searchset(*observations), "conditions": searchset(),
                         "medications": searchset(*requests_),
                         "medicationStatements": searchset(*statements),
                         "diagnosticReports": searchset()}}
    r = requests.post(f"{server.base_url}/cds-services/bone-muscle-health", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def topics(cards) -> list[str]:
    return [c["source"]["topic"]["code"] for c in cards]


@pytest.fixture(scope="module")
def server(open_server):
    return open_server


def test_statement_at_the_acr_limits(server):
    # ACR 2022 Rec 1: >= 2.5 mg/day for > 3 months (counted as more than 90 days)
    (card,) = call(server, [prednisone_statement(2.5, 91)])
    assert card["source"]["topic"]["code"] == "bone-risk-medication"
    assert "prednisone 2.5 mg/day for 91 days" in card["summary"] and day(91) in card["summary"]
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "ServiceRequest"
    assert call(server, [prednisone_statement(2.4, 200)]) == []
    assert call(server, [prednisone_statement(5, 90)]) == []


def test_request_with_a_recent_dxa_has_nothing_to_do(server):
    order = {"resourceType": "MedicationRequest", "id": "mr-pred", "status": "active", "intent": "order",
             "subject": {"reference": f"Patient/{PATIENT}"},
             "medicationCodeableConcept": {"text": "prednisone"}, "authoredOn": day(150),
             "dosageInstruction": dose(10)}
    assert topics(call(server, requests_=[order])) == ["bone-risk-medication"]
    assert call(server, requests_=[order], observations=[dxa(365)]) == []
    assert topics(call(server, requests_=[order], observations=[dxa(3 * 365)])) == ["bone-risk-medication"]


def test_dosage_that_is_not_valid_fhir_makes_no_card_and_no_error(server):
    assert call(server, [prednisone_statement("five", 200)]) == []
    assert call(server, [{**prednisone_statement(5, 200), "dosage": {"text": "as directed"}}]) == []
