"""normalize at the service's edge: a real gunicorn server, real HTTP.

Discovery publishes the terminology's prefetch templates; the unit conversion and the
patient check decide what the service answers (vitamin D deficiency: < 20 ng/mL = < 49.92
nmol/L, Endocrine Society 2011, the default profile)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from cds.knowledge.terminology import load_terminology

from rules_support import RULES

PATIENT = "norm-http-1"


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r} for r in resources]}


def vitd(rid: str, value: float, unit: str, code: str, subject: str = PATIENT) -> dict[str, Any]:
    when = (datetime.now(timezone.utc) - timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{subject}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                              "code": unit}}


def call(server, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/x", "patientId": PATIENT},
            "prefetch": {"patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female",
                                     "birthDate": "1960-05-06"},
                         "observations": searchset(*observations),
                         "conditions": searchset(), "medications": searchset(),
                         "medicationStatements": searchset(), "diagnosticReports": searchset()}}
    r = requests.post(f"{server.base_url}/cds-services/bone-muscle-health", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def topics(cards: list[dict[str, Any]]) -> set[str]:
    return {c["source"]["topic"]["code"] for c in cards if c.get("source", {}).get("topic")}


@pytest.fixture(scope="module")
def server(open_server):
    return open_server


def test_discovery_publishes_the_terminology_prefetch(server):
    services = requests.get(f"{server.base_url}/cds-services", timeout=10).json()["services"]
    [svc] = [s for s in services if s["id"] == "bone-muscle-health"]
    assert svc["prefetch"] == load_terminology(RULES).prefetch_templates()


@pytest.mark.parametrize("value, unit, code, deficient", [
    (49.0, "nmol/L", "14635-7", True),      # 19.63 ng/mL
    (50.0, "nmol/L", "14635-7", False),     # 20.03 ng/mL
    (19.9, "ng/mL", "62292-8", True),
    (19.9, "ug/L", "62292-8", True),
    (19.9, "mg/dL", "62292-8", False),      # unit not accepted: no card built on a guess
    (19.9, "nmol/L", "62292-8", False),     # unit contradicts the code's property
])
def test_units_decide_the_vitamin_d_card(server, value, unit, code, deficient):
    cards = call(server, [vitd("v1", value, unit, code)])
    assert ("vitamin-d-deficiency" in topics(cards)) is deficient, cards


def test_another_patients_result_never_makes_a_card(server):
    cards = call(server, [vitd("other", 5.0, "ng/mL", "62292-8", subject="someone-else")])
    assert not topics(cards) & {"vitamin-d-deficiency", "vitamin-d-insufficiency"}, cards
