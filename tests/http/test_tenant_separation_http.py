"""Tenants stay apart (real gunicorn, authentication on).

Client B posted "accepted" feedback on client A's card and got 200, and any trusted client
could read every tenant's feedback summary. Now a card record carries its issuing client
(``iss``, and the ``tenant`` claim when sent), feedback on another client's card gets the
very answer an unknown card gets, and the summary is for clients marked ``admin: true``.
"""
from __future__ import annotations

import uuid

import pytest
import requests

from auth_support import new_ec_signer, write_clients
from conftest import run_server
from hardening_support import SERVICE, pv_body, templates

pytestmark = pytest.mark.slow

FEEDBACK = SERVICE + "/feedback"
SUMMARY = "/admin/feedback-summary"


def _feedback(card: str, outcome: str = "overridden") -> dict:
    return {"feedback": [{"card": card, "outcome": outcome,
                          "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}


def _without_ids(body: dict, *ids: str) -> str:
    text = str(body)
    for i in ids:
        text = text.replace(i, "<card>")
    return text


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    a = new_ec_signer("https://ehr-a.example.org", "a-1", tenant="hospital-a")
    b = new_ec_signer("https://ehr-b.example.org", "b-1", tenant="hospital-b")
    b2 = new_ec_signer("https://ehr-a.example.org", "a-1")  # A's key, another tenant claim
    b2.key, b2.tenant = a.key, "hospital-a2"
    admin = new_ec_signer("https://ops.example.org", "ops-1")
    clients = write_clients(tmp / "clients.yaml", [
        {"iss": a.iss, "jwks": a.jwks()},
        {"iss": b.iss, "jwks": b.jwks()},
        {"iss": admin.iss, "jwks": admin.jwks(), "admin": True}])
    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
           "MSKCDS_REPLAY_CACHE_URL": "memory", "MSKCDS_ADMIN_SUMMARY_ENABLED": "true"}
    with run_server(env, tmp, workers=1) as server:
        yield server, a, b, b2, admin


def _card(server, signer) -> str:
    url = server.url(SERVICE)
    body = pv_body(templates(server, signer.bearer(server.url("/cds-services"))))
    r = requests.post(url, json=body, headers=signer.bearer(url), timeout=10)
    assert r.status_code == 200 and r.json()["cards"], r.text
    return r.json()["cards"][0]["uuid"]


def test_feedback_on_another_clients_card_is_answered_as_an_unknown_card(env):
    server, a, b, b2, _ = env
    url = server.url(FEEDBACK)
    card = _card(server, a)
    ghost = str(uuid.uuid4())
    unknown = requests.post(url, json=_feedback(ghost), headers=b.bearer(url), timeout=10)
    foreign = requests.post(url, json=_feedback(card), headers=b.bearer(url), timeout=10)
    assert foreign.status_code == unknown.status_code == 404, foreign.text
    assert _without_ids(foreign.json(), card) == _without_ids(unknown.json(), ghost)
    # Same iss, another tenant: also not its card.
    other_tenant = requests.post(url, json=_feedback(card), headers=b2.bearer(url), timeout=10)
    assert other_tenant.status_code == 404, other_tenant.text
    # The issuing client (and tenant) may report on it.
    own = requests.post(url, json=_feedback(card), headers=a.bearer(url), timeout=10)
    assert own.status_code == 200 and own.json()["stored"] == 1, own.text


def test_summary_is_for_admin_clients_with_per_tenant_figures(env):
    server, a, b, _, admin = env
    url = server.url(FEEDBACK)
    card_b = _card(server, b)
    assert requests.post(url, json=_feedback(card_b), headers=b.bearer(url),
                         timeout=10).status_code == 200
    summary = server.url(SUMMARY)
    for signer in (a, b):
        r = requests.get(summary, headers=signer.bearer(summary), timeout=10)
        assert r.status_code == 403, r.text
        assert r.json()["issue"][0]["code"] == "forbidden"
        assert "hospital" not in r.text
    r = requests.get(summary, headers=admin.bearer(summary), timeout=10)
    assert r.status_code == 200, r.text
    total = r.json()
    assert sum(f["issued"] for f in total.values()) >= 2
    per_tenant = {}
    for tenant in ("hospital-a", "hospital-b", "nobody"):
        r = requests.get(summary, params={"tenant": tenant}, headers=admin.bearer(summary),
                         timeout=10)
        assert r.status_code == 200, r.text
        per_tenant[tenant] = r.json()
    assert per_tenant["nobody"] == {}
    b_only = per_tenant["hospital-b"]
    assert sum(f["overridden"] for f in b_only.values()) == 1
    assert sum(f["issued"] for f in b_only.values()) == 1
    a_only = per_tenant["hospital-a"]
    assert sum(f["overridden"] for f in a_only.values()) == 1  # B's attempt was not stored
    assert sum(f["overridden"] for f in total.values()) == 2
    r = requests.get(summary, params={"client": b.iss}, headers=admin.bearer(summary), timeout=10)
    assert r.status_code == 200 and r.json() == b_only
