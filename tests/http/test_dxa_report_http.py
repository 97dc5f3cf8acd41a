"""Through a real gunicorn server: the patient-view service asks for DXA DiagnosticReports in its
prefetch, and a DXA report with no readable result (shaped as the FHIR R4 core example
DiagnosticReport/102, LOINC 38269-7) means a DXA was done: no DXA screening card (real HTTP)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import requests

PATIENT = "dxa-report-http-1"


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"http://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                       "resource": r} for r in resources]}


def report(status: str = "final") -> dict[str, Any]:
    day = (datetime.now(timezone.utc) - timedelta(days=300)).strftime("%Y-%m-%d")
    return {"resourceType": "DiagnosticReport", "id": "dxa-102", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": "38269-7"}],
                     "text": "DXA BONE DENSITOMETRY"},
            "subject": {"reference": f"Patient/{PATIENT}"}, "effectiveDateTime": day,
            "conclusionCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "391040000",
                                            "display": "At risk of osteoporotic fracture"}]}]}


def call(server, *reports: dict[str, Any]) -> list[str]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/x", "patientId": PATIENT},
            "prefetch": {"patient": {"resourceType": "Patient", "id": PATIENT, "gender": "female",
                                     "birthDate": "1955-04-03"},
                         "observations": searchset(), "conditions": searchset(), "medications": searchset(),
                         "medicationStatements": searchset(), "diagnosticReports": searchset(*reports)}}
    r = requests.post(f"{server.base_url}/cds-services/bone-muscle-health", json=body, timeout=20)
    assert r.status_code == 200, r.text
    return [c["source"]["topic"]["code"] for c in r.json()["cards"]]


def test_discovery_asks_for_dxa_reports(open_server):
    svc = next(s for s in requests.get(f"{open_server.base_url}/cds-services", timeout=10).json()["services"]
               if s["id"] == "bone-muscle-health")
    assert svc["prefetch"]["diagnosticReports"].startswith("DiagnosticReport?patient={{context.patientId}}&code=")
    assert "http://loinc.org|38269-7" in svc["prefetch"]["diagnosticReports"]


def test_a_dxa_report_without_readable_results_removes_the_screening_card(open_server):
    assert call(open_server) == ["dxa-screening-due"]                 # a woman of 71, nothing on record
    assert call(open_server, report()) == []                           # a DXA was done: no screening card
    assert call(open_server, report("entered-in-error")) == ["dxa-screening-due"]
