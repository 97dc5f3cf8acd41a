"""No patient data and no tokens in the logs: proven on the log of a full run.

The server is started the way production starts it (``mskcds serve``, gunicorn with
its defaults from the CLI, 2 workers, authentication on); everything it writes to
stdout and stderr is captured. A run with accepted calls (prefetch, and a FHIR server
read with the client's access token), replays, expired tokens, a refused fhirServer,
bad bodies and feedback, then the whole log is searched for the patient id, values
from the resources, the JWTs, the access token and the jtis.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from auth_support import new_ec_signer, write_clients
from conftest import REPO, free_port
from fhir_test_server import FhirTestServer

SERVICE = "/cds-services/bone-muscle-health"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logging")
    fhir = FhirTestServer().start()
    signer = new_ec_signer("https://ehr-log.example.org", "log-es384")
    clients = write_clients(tmp / "clients.yaml", [
        {"iss": signer.iss, "jwks": signer.jwks(), "fhir_servers": [fhir.base_url]}])
    port = free_port()
    env = {**os.environ, "MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
           "MSKCDS_REPLAY_CACHE_URL": f"sqlite:///{tmp / 'replay.sqlite3'}",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp / 'mskcds.sqlite3'}", "MSKCDS_LOG_LEVEL": "INFO",
           "MSKCDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "cds.cli.main", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2"], cwd=REPO, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if requests.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
            secrets = exercise(base, signer, fhir)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
            fhir.stop()
    return log_path.read_text(errors="replace"), secrets, signer


def exercise(base: str, signer, fhir: FhirTestServer) -> dict:
    """A full run; returns what must never be in the log, and the statuses seen."""
    tag = uuid.uuid4().hex[:10]
    patient_id = f"pt-{tag}"
    family = f"Quixotl{tag}"
    note = f"bone-pain-note-{tag}"
    value = 11.0 + int(tag[:4], 16) / 100000  # a distinctive measured value
    access_token = f"at-{uuid.uuid4().hex}{uuid.uuid4().hex}"
    patient = {"resourceType": "Patient", "id": patient_id, "gender": "female",
               "birthDate": "1950-04-02", "name": [{"family": family, "given": ["Ada"]}]}
    observation = {"resourceType": "Observation", "id": f"obs-{tag}", "status": "final",
                   "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                             "observation-category", "code": "laboratory"}]}],
                   "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
                   "subject": {"reference": f"Patient/{patient_id}"},
                   "effectiveDateTime": "2026-01-15",
                   "valueQuantity": {"value": value, "unit": "ng/mL",
                                     "system": "http://unitsofmeasure.org", "code": "ng/mL"},
                   "note": [{"text": note}]}
    url = base + SERVICE
    disc = base + "/cds-services"
    statuses: dict[str, int] = {}
    tokens: list[str] = []

    def bearer(aud: str, **kw) -> dict[str, str]:
        token = signer.token(aud, **kw)
        tokens.append(token)
        return {"Authorization": f"Bearer {token}"}

    r = requests.get(disc, headers=bearer(disc), timeout=10)
    statuses["discovery"] = r.status_code
    templates = r.json()["services"][0].get("prefetch", {})
    prefetch = {}
    for key, template in templates.items():
        if template.startswith("Patient/"):
            prefetch[key] = patient
        elif template.startswith("Observation"):
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 1,
                             "entry": [{"resource": observation}]}
        else:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0,
                             "entry": []}

    def body(**over):
        out = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
               "context": {"userId": "Practitioner/log-test", "patientId": patient_id},
               "prefetch": prefetch}
        out.update(over)
        return out

    # 1. accepted, all data in prefetch
    first = bearer(url)
    r = requests.post(url, json=body(), headers=first, timeout=15)
    statuses["prefetch"] = r.status_code
    cards = r.json().get("cards", []) if r.status_code == 200 else []
    # 2. accepted, the service reads the FHIR server with the client's access token
    fhir.load(patient, observation)
    fhir.token = access_token
    auth = {"access_token": access_token, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/Patient.read patient/Observation.read", "subject": "log-client"}
    r = requests.post(url, json=body(prefetch={}, fhirServer=fhir.base_url,
                                     fhirAuthorization=auth), headers=bearer(url), timeout=20)
    statuses["fhir"] = r.status_code
    statuses["fhir_reads_with_token"] = sum(
        1 for rec in fhir.asked() if rec.headers.get("Authorization") == f"Bearer {access_token}")
    # 3. refused: replay, expired, wrong aud, fhirServer not configured, bad bodies
    statuses["replay"] = requests.post(url, json=body(), headers=first, timeout=10).status_code
    statuses["expired"] = requests.post(url, json=body(), timeout=10, headers=bearer(
        url, exp=int(time.time()) - 600, iat=int(time.time()) - 900)).status_code
    statuses["wrong_aud"] = requests.post(url, json=body(), timeout=10, headers=bearer(
        base + "/cds-services/other")).status_code
    statuses["other_fhir"] = requests.post(url, timeout=10, headers=bearer(url), json=body(
        prefetch={}, fhirServer="https://attacker.example/fhir",
        fhirAuthorization=auth)).status_code
    statuses["bad_body"] = requests.post(url, timeout=10, headers=bearer(url), json=body(
        hook="patient-view", context={"patientId": patient_id, "userId": 17})).status_code
    statuses["not_json"] = requests.post(url, timeout=10, headers={
        **bearer(url), "Content-Type": "application/json"},
        data=f'{{"patientId": "{patient_id}", "name": "{family}"'.encode()).status_code
    # 4. feedback on what was issued
    fb = base + SERVICE + "/feedback"
    feedback = {"feedback": [{"card": c["uuid"], "outcome": "accepted",
                              "acceptedSuggestions": [],
                              "outcomeTimestamp": "2026-02-01T10:00:00Z"} for c in cards if "uuid" in c]}
    if feedback["feedback"]:
        statuses["feedback"] = requests.post(fb, json=feedback, headers=bearer(fb),
                                             timeout=10).status_code
    jtis = [json.loads(_b64(t.split(".")[1]))["jti"] for t in tokens]
    return {"patient_id": patient_id, "family": family, "note": note, "value": repr(value),
            "access_token": access_token, "tokens": tokens, "jtis": jtis, "statuses": statuses}


def _b64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_the_run_did_what_it_should(run):
    _log, secrets, _signer = run
    s = secrets["statuses"]
    assert s["discovery"] == 200 and s["prefetch"] == 200 and s["fhir"] == 200, s
    assert s["fhir_reads_with_token"] >= 1, s  # the access token was really used...
    assert s["replay"] == 401 and s["expired"] == 401 and s["wrong_aud"] == 401, s
    assert s["other_fhir"] == 412 and s["bad_body"] == 400 and s["not_json"] == 400, s


def test_log_has_one_structured_line_per_request(run):
    log, secrets, _signer = run
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests_logged = [l for l in lines if l.get("logger") == "mskcds.access"]
    calls = [l for l in requests_logged if l.get("path_template") == "/cds-services/<service_id>"]
    assert len(calls) >= 8
    for line in calls:
        assert line["service"] == "bone-muscle-health"
        assert isinstance(line["status"], int) and isinstance(line["latency_ms"], (int, float))
    assert {l["status"] for l in calls} >= {200, 400, 401}
    assert any(l.get("hook") == "patient-view" for l in calls)
    refused = [l for l in lines if l["msg"].startswith("authentication failed")]
    assert len(refused) == 3 and all(l["level"] == "warning" for l in refused)
    assert any("jti already used" in l["msg"] for l in refused)
    # gunicorn's own access log (which would print paths and client addresses) is off.
    assert not any('"POST /cds-services' in line for line in log.splitlines())


def test_log_holds_no_patient_data_and_no_tokens(run):
    log, secrets, _signer = run
    assert log.strip(), "the server logged nothing: the search below would prove nothing"
    must_not_appear = {
        "patient id": secrets["patient_id"],
        "patient name": secrets["family"],
        "resource text": secrets["note"],
        "resource value": secrets["value"],
        "FHIR access token": secrets["access_token"],
    }
    for i, token in enumerate(secrets["tokens"]):
        header, payload, signature = token.split(".")
        must_not_appear[f"JWT {i}"] = token
        must_not_appear[f"JWT {i} payload"] = payload
        must_not_appear[f"JWT {i} signature"] = signature
    for i, jti in enumerate(secrets["jtis"]):
        must_not_appear[f"jti {i}"] = jti
    assert len(secrets["tokens"]) >= 8
    found = {what: value for what, value in must_not_appear.items() if value in log}
    assert not found, f"found in the server log: {sorted(found)}"
    assert "[redacted-jwt]" not in log  # the safety net never had to act
