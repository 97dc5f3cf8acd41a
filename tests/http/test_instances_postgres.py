"""Several instances on one PostgreSQL, and readiness.

Two service instances (separate gunicorn masters on their own ports) share one PostgreSQL
database for the feedback store and the replay cache: a token accepted by instance A is
refused by B, feedback on A's card posted to B is stored, and the report counts both.
``/readyz`` answers 503 (with Retry-After) while the database or the replay cache is
unusable, and 200 again once it is back; ``/healthz`` stays 200 throughout.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
from sqlalchemy import create_engine, text

from auth_support import new_ec_signer, write_clients
from conftest import EXAMPLES, REPO, load_json, run_server
from feedback_support import pg_databases  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres

SERVICE = "/cds-services/bone-muscle-health"
EXAMPLE = load_json(sorted(EXAMPLES.glob("*.request.json"))[0])


def fresh() -> dict:
    body = copy.deepcopy(EXAMPLE)
    body["hookInstance"] = str(uuid.uuid4())
    return body


def bearer(signer, url: str, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.token(url, **claims)}"}


def shared_setup(tmp_path, url: str):
    """One trusted client, and settings pointing the store and the replay cache at ``url``."""
    signer = new_ec_signer("https://ehr.example", "k1")
    clients = write_clients(tmp_path / "clients.yaml", [{"iss": signer.iss, "jwks": signer.jwks()}])
    return signer, {"MSKCDS_CLIENTS_FILE": str(clients), "MSKCDS_DATABASE_URL": url,
                    "MSKCDS_REPLAY_CACHE_URL": url}


def test_two_instances_share_one_postgresql(tmp_path, pg_databases):  # noqa: F811
    url = pg_databases.create()
    signer, env = shared_setup(tmp_path, url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_server(env, tmp_path / "a", workers=2) as a, \
            run_server(env, tmp_path / "b", workers=2) as b:
        # One token, both endpoints in its aud: A accepts it, B sees the replay.
        token = signer.token([a.url(SERVICE), b.url(SERVICE)])
        headers = {"Authorization": f"Bearer {token}"}
        first = requests.post(a.url(SERVICE), json=fresh(), headers=headers, timeout=30)
        assert first.status_code == 200, first.text
        replayed = requests.post(b.url(SERVICE), json=fresh(), headers=headers, timeout=30)
        assert replayed.status_code == 401
        # Feedback on A's card, posted to B, is stored (one store for both).
        card = first.json()["cards"][0]
        item = {"card": card["uuid"], "outcome": "overridden",
                "outcomeTimestamp": "2026-01-02T03:04:05Z"}
        fb = requests.post(b.url(SERVICE + "/feedback"), json={"feedback": [item]}, timeout=30,
                           headers=bearer(signer, b.url(SERVICE + "/feedback")))
        assert fb.status_code == 200 and fb.json() == {"stored": 1, "duplicates": 0}, fb.text
        # B issues a card too; A takes feedback on it.
        second = requests.post(b.url(SERVICE), json=fresh(), timeout=30,
                               headers=bearer(signer, b.url(SERVICE)))
        assert second.status_code == 200, second.text
        other = second.json()["cards"][0]
        item2 = {"card": other["uuid"], "outcome": "overridden",
                 "outcomeTimestamp": "2026-01-02T04:04:05Z"}
        fb2 = requests.post(a.url(SERVICE + "/feedback"), json={"feedback": [item2]}, timeout=30,
                            headers=bearer(signer, a.url(SERVICE + "/feedback")))
        assert fb2.status_code == 200, fb2.text
    # The report (run against the shared database) counts both instances' cards and feedback.
    run = subprocess.run([sys.executable, "-m", "cds.cli.main", "feedback-report", "--format",
                          "json"], cwd=REPO, env={**os.environ, "MSKCDS_DATABASE_URL": url},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    issued = sum(v["issued"] for v in report.values())
    assert issued == len(first.json()["cards"]) + len(second.json()["cards"])
    assert sum(v["overridden"] for v in report.values()) == 2


def test_readyz_follows_the_database_and_the_replay_cache(tmp_path, pg_databases):  # noqa: F811
    url = pg_databases.create()
    _, env = shared_setup(tmp_path, url)
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with run_server(env, tmp_path, workers=1) as srv:
            ready = requests.get(srv.url("/readyz"), timeout=10)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"rules": "ok", "database": "ok",
                                              "replay_cache": "ok"}
            with admin.connect() as conn:
                conn.execute(text("ALTER TABLE feedback RENAME TO feedback_away"))
                conn.execute(text("ALTER TABLE mskcds_jti RENAME TO mskcds_jti_away"))
            time.sleep(1.2)  # past the one-second readiness cache
            down = requests.get(srv.url("/readyz"), timeout=10)
            assert down.status_code == 503, down.text
            assert down.headers.get("Retry-After")
            named = {i["diagnostics"].split(":")[0] for i in down.json()["issue"]}
            assert named == {"database", "replay_cache"}
            assert requests.get(srv.url("/healthz"), timeout=10).status_code == 200
            with admin.connect() as conn:
                conn.execute(text("ALTER TABLE feedback_away RENAME TO feedback"))
                conn.execute(text("ALTER TABLE mskcds_jti_away RENAME TO mskcds_jti"))
            time.sleep(1.2)
            assert requests.get(srv.url("/readyz"), timeout=10).status_code == 200
    finally:
        admin.dispose()
