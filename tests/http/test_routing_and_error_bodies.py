"""Routing and error bodies through a real server process: discovery, 404/405/415/400/412 as
OperationOutcomes, CORS preflight, an empty answer when there is no data."""
from __future__ import annotations

import uuid

import requests


def pv_request(**over):
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/example", "patientId": "p1"},
            "prefetch": {"patient": {"resourceType": "Patient", "id": "p1"}}}
    body.update(over)
    return body


def test_discovery_lists_bone_muscle_health(open_server):
    r = requests.get(open_server.url("/cds-services"), timeout=5)
    assert r.status_code == 200
    services = {s["id"]: s for s in r.json()["services"]}
    assert services["bone-muscle-health"]["hook"] == "patient-view"
    assert services["bone-muscle-health"]["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_unknown_service_is_404_json(open_server):
    r = requests.post(open_server.url("/cds-services/nope"), json=pv_request(), timeout=5)
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_wrong_method_is_405_json(open_server):
    r = requests.delete(open_server.url("/cds-services/bone-muscle-health"), timeout=5)
    assert r.status_code == 405
    assert r.json()["issue"][0]["code"] == "not-supported"


def test_not_json_is_400_and_wrong_type_415(open_server):
    url = open_server.url("/cds-services/bone-muscle-health")
    r = requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(url, data=b"hook=x", headers={"Content-Type": "text/plain"}, timeout=5)
    assert r.status_code == 415


def test_missing_context_field_names_the_field(open_server):
    body = pv_request()
    del body["context"]["patientId"]
    r = requests.post(open_server.url("/cds-services/bone-muscle-health"), json=body, timeout=5)
    assert r.status_code == 400
    assert ["context.patientId"] in [i.get("expression") for i in r.json()["issue"]]


def test_cors_preflight(open_server):
    r = requests.options(open_server.url("/cds-services/bone-muscle-health"), headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"}, timeout=5)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]


def test_no_data_gives_empty_cards(open_server):
    # The client says "no data" for every search key (null), so nothing is fetched.
    body = pv_request()
    body["prefetch"].update({"observations": None, "conditions": None, "medications": None,
                             "medicationStatements": None, "diagnosticReports": None})
    r = requests.post(open_server.url("/cds-services/bone-muscle-health"), json=body, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"cards": []}


def test_missing_keys_without_fhir_server_is_412_naming_them(open_server):
    r = requests.post(open_server.url("/cds-services/bone-muscle-health"), json=pv_request(), timeout=5)
    assert r.status_code == 412, r.text
    named = {e for i in r.json()["issue"] for e in i.get("expression", [])}
    assert {"prefetch.observations", "prefetch.conditions", "prefetch.medications",
            "prefetch.medicationStatements", "prefetch.diagnosticReports"} <= named


def test_a_werkzeug_5xx_is_a_generic_500_not_a_400_with_werkzeug_text(make_app):
    """A server-side werkzeug HTTPException (ours, never the client's) gets the same generic
    500 body as any other fault: not a 4xx, not werkzeug's wording."""
    from flask import abort

    app = make_app()
    app.add_url_rule("/boom/<int:code>", "boom", lambda code: abort(code))
    client = app.test_client()
    for code in (500, 503):
        r = client.get(f"/boom/{code}")
        assert r.status_code == 500
        body = r.get_json()
        assert body["resourceType"] == "OperationOutcome"
        assert body["issue"][0]["diagnostics"] == "Internal error in the CDS service."
    r = client.get("/boom/418")          # a client-side code still speaks for itself
    assert r.status_code == 418 and r.get_json()["resourceType"] == "OperationOutcome"
