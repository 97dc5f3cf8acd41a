"""POST /cds-services/{id}/feedback, GET /admin/feedback-summary and the report CLI,
through a real gunicorn server (SQLite file, and PostgreSQL when available).

External feedback payloads (CDS Hooks spec examples, AHRQ CQL Services fixtures) name
cards of another service; each test issues cards first and replays those shapes with
our card and suggestion uuids substituted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests

from cds.cli.main import main as cli_main
from cds.config import Config
from cds.store.storage import SqlStore, open_store
from conftest import EXAMPLES, REPO, run_server
from feedback_support import (BACKENDS, SERVICE, load, make_card, new_database_url,  # noqa: F401
                              pg_databases, substitute, wait_on_record)

FEEDBACK_URL = f"/cds-services/{SERVICE}/feedback"


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def database_url(backend, tmp_path_factory, request) -> str:
    return new_database_url(backend, tmp_path_factory.mktemp("fbdb"), request)


@pytest.fixture(scope="module")
def server(database_url, tmp_path_factory):
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_DATABASE_URL": database_url,
           "MSKCDS_ADMIN_SUMMARY_ENABLED": "true"}
    with run_server(env, tmp_path_factory.mktemp("fbsrv"), workers=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def store(database_url, server) -> SqlStore:
    """The same database the server writes, opened from the test process."""
    return open_store(Config.from_env({"database_url": database_url, "require_auth": False},
                                      environ={}))


def service_cards(server, n: int, same_finding: bool = False) -> list[dict] | None:
    """``n`` cards with suggestions from real service calls on fhir_examples/*.request.json
    (None while there are no examples in the tree)."""
    examples = sorted(EXAMPLES.glob("*.request.json"))
    if not examples:
        return None
    cards: list[dict] = []
    for attempt in range(20 * n):
        body = json.loads(examples[attempt % len(examples)].read_text(encoding="utf-8"))
        body["hookInstance"] = str(uuid.uuid4())
        r = requests.post(server.url(f"/cds-services/{SERVICE}"), json=body, timeout=30)
        assert r.status_code == 200, r.text[:300]
        for card in r.json()["cards"]:
            if not card.get("suggestions"):
                continue
            if same_finding and cards and card["source"].get("topic") != cards[0]["source"].get("topic"):
                continue
            cards.append(card)
            if len(cards) == n:
                return cards
    raise AssertionError(f"the example requests did not produce {n} cards with suggestions")


def issue(server, store: SqlStore, n: int, same_finding: bool = False) -> list[dict]:
    """Cards issued by the service (real calls), or through the store until examples exist."""
    cards = service_cards(server, n, same_finding)
    if cards is None:
        cards = [make_card("vitd-deficiency", 1) for _ in range(n)]
        assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()), cards)
    wait_on_record(store, cards)  # the service writes its records moments after answering
    return cards


def post(server, body, path: str = FEEDBACK_URL, **kw):
    return requests.post(server.url(path), json=body, timeout=10, **kw)


def rows_for(store: SqlStore, cards) -> list[dict]:
    wanted = {c["uuid"] for c in cards}
    return [r for r in store.feedback_rows() if r["card_uuid"] in wanted]


# --------------------------------------------------------------------------- spec examples
def test_spec_feedback_accepted(server, store, shared_dir):
    doc = load(shared_dir / "cds-hooks-spec" / "feedback-accepted.json")
    cards = issue(server, store, 1)
    r = post(server, substitute(doc, cards))
    assert r.status_code == 200, r.text
    (row,) = rows_for(store, cards)
    assert row["outcome"] == "accepted"
    assert json.loads(row["accepted_suggestions"]) == [cards[0]["suggestions"][0]["uuid"]]
    assert row["outcome_timestamp"] == datetime(2021, 12, 11, 10, 5, 31, tzinfo=timezone.utc)


def test_spec_feedback_overridden_without_reason(server, store, shared_dir):
    doc = load(shared_dir / "cds-hooks-spec" / "feedback-overridden-no-reason.json")
    cards = issue(server, store, 1)
    assert post(server, substitute(doc, cards)).status_code == 200
    (row,) = rows_for(store, cards)
    assert (row["outcome"], row["override_reason_code"], row["user_comment"]) == (
        "overridden", None, None)


def test_spec_feedback_overridden_with_reason(server, store, shared_dir):
    doc = load(shared_dir / "cds-hooks-spec" / "feedback-overridden-with-reason.json")
    cards = issue(server, store, 1)
    assert post(server, substitute(doc, cards)).status_code == 200
    (row,) = rows_for(store, cards)
    reason = doc["feedback"][0]["overrideReason"]
    assert (row["override_reason_system"], row["override_reason_code"], row["user_comment"]) == (
        reason["reason"]["system"], reason["reason"]["code"], reason["userComment"])


def test_cql_services_same_card_reported_twice(server, store, shared_dir):
    doc = load(shared_dir / "cql-services" / "examples" / "hooks" / "R4" / "feedback.json")
    cards = issue(server, store, 1)
    assert post(server, substitute(doc, cards)).status_code == 200
    assert sorted(r["outcome"] for r in rows_for(store, cards)) == ["accepted", "overridden"]


def test_cql_services_two_cards(server, store, shared_dir):
    doc = load(shared_dir / "cql-services" / "fixtures" / "hooks-feedback" / "feedbackFor2.json")
    cards = issue(server, store, 2)
    assert post(server, substitute(doc, cards)).status_code == 200
    assert {r["card_uuid"] for r in rows_for(store, cards)} == {c["uuid"] for c in cards}


def test_external_payload_as_is_names_unknown_cards(server, store, shared_dir):
    doc = load(shared_dir / "cql-services" / "fixtures" / "hooks-feedback" / "feedbackFor2.json")
    before = store.counts()["feedback"]
    r = post(server, doc)
    assert r.status_code == 404  # every card it names is unknown here
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in body["issue"]] == [["feedback[0].card"], ["feedback[1].card"]]
    assert {i["code"] for i in body["issue"]} == {"not-found"}
    assert store.counts()["feedback"] == before


def test_an_unknown_card_beside_another_problem_is_one_400_naming_both(server, store, shared_dir):
    doc = load(shared_dir / "cql-services" / "fixtures" / "hooks-feedback" / "feedbackFor2.json")
    (card,) = issue(server, store, 1)
    body = substitute(doc, [card, card])
    body["feedback"][0]["card"] = str(uuid.uuid4())         # unknown
    body["feedback"][1]["outcome"] = "dismissed"            # not a CDS Hooks outcome
    before = store.counts()["feedback"]
    r = post(server, body)
    assert r.status_code == 400, r.text
    expressions = [i.get("expression") for i in r.json()["issue"]]
    assert ["feedback[1].outcome"] in expressions, expressions
    assert store.counts()["feedback"] == before


# --------------------------------------------------------------------------- invalid requests
@pytest.mark.parametrize("field, value, expression", [
    ("outcome", "dismissed", "feedback[1].outcome"),
    ("outcomeTimestamp", "11 Dec 2021", "feedback[1].outcomeTimestamp"),
    ("acceptedSuggestions", None, "feedback[1].acceptedSuggestions"),
    ("card", 42, "feedback[1].card"),
])
def test_one_bad_item_stores_nothing(server, store, shared_dir, field, value, expression):
    doc = load(shared_dir / "cql-services" / "fixtures" / "hooks-feedback" / "feedbackFor2.json")
    cards = issue(server, store, 2)
    body = substitute(doc, cards)
    if value is None:
        del body["feedback"][1][field]
    else:
        body["feedback"][1][field] = value
    before = store.counts()["feedback"]
    r = post(server, body)
    assert r.status_code == 400
    issues = r.json()["issue"]
    assert [expression] in [i.get("expression") for i in issues], issues
    assert store.counts()["feedback"] == before
    assert rows_for(store, cards) == []


@pytest.mark.parametrize("reason, expression", [
    ({"reason": {"system": "https://example.org/" + "s" * 300, "code": "x"}}, "reason.system"),
    ({"reason": {"system": "https://example.org/r", "code": "c" * 129}}, "reason.code"),
    ({"reason": {"system": "https://example.org/r", "code": "x", "display": "d" * 256}},
     "reason.display"),
    ({"reason": {"system": "https://example.org/r", "code": "x\u0000"}}, "reason.code"),
    ({"userComment": "not\u0000here"}, "userComment"),
])
def test_values_the_database_cannot_hold_are_400_naming_the_field(server, store, reason,
                                                                   expression):
    """PostgreSQL refused these with a DataError (a 500) where SQLite stored them: both
    backends now answer 400 naming the field, and store nothing from the request."""
    good, bad = issue(server, store, 2)
    items = [{"card": c["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z",
              "overrideReason": r}
             for c, r in ((good, {"userComment": "fine"}), (bad, reason))]
    before = store.counts()["feedback"]
    r = post(server, {"feedback": items})
    assert r.status_code == 400, r.text
    issues = r.json()["issue"]
    assert [f"feedback[1].overrideReason.{expression}"] in [i.get("expression") for i in issues]
    assert store.counts()["feedback"] == before
    items[1]["overrideReason"] = {"reason": {"system": "https://example.org/r", "code": "x"},
                                  "userComment": "c" * 10_000}  # userComment is unlimited text
    assert post(server, {"feedback": items}).status_code == 200


def test_wrong_suggestion_id_is_400(server, store):
    card, other = issue(server, store, 2)
    body = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                          "acceptedSuggestions": [{"id": other["suggestions"][0]["uuid"]}],
                          "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    r = post(server, body)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["feedback[0].acceptedSuggestions[0].id"]


def test_not_json_and_wrong_media_type(server):
    r = requests.post(server.url(FEEDBACK_URL), data=b"{", timeout=5,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.post(server.url(FEEDBACK_URL), data=b"x", timeout=5,
                      headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_feedback_for_unknown_service_is_404(server, store):
    (card,) = issue(server, store, 1)
    r = post(server, {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                                    "outcomeTimestamp": "2026-01-01T00:00:00Z"}]},
             path="/cds-services/no-such-service/feedback")
    assert r.status_code == 404
    assert rows_for(store, [card]) == []


# --------------------------------------------------------------------------- summary and CLI
def test_admin_summary_matches_store_and_cli(server, store, database_url, monkeypatch, capsys):
    cards = issue(server, store, 3, same_finding=True)
    finding = cards[0]["source"].get("topic", {}).get("code", "(no topic)")
    today = datetime.now(timezone.utc).date().isoformat()
    zero = {"issued": 0, "accepted": 0, "overridden": 0, "acceptance_rate": None,
            "override_reasons": {}}
    before = store.summary(today, today).get(finding, zero)
    offered = cards[1].get("overrideReasons") or [{"system": "https://example.org/or", "code": "dup"}]
    reason = {"system": offered[0]["system"], "code": offered[0]["code"]}
    label = f"{reason['system']}|{reason['code']}"
    body = {"feedback": [
        {"card": cards[0]["uuid"], "outcome": "accepted",
         "acceptedSuggestions": [{"id": cards[0]["suggestions"][0]["uuid"]}],
         "outcomeTimestamp": "2026-01-01T00:00:00Z"},
        {"card": cards[1]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z",
         "overrideReason": {"reason": reason}},
    ]}
    assert post(server, body).status_code == 200
    r = requests.get(server.url("/admin/feedback-summary"), params={"from": today, "to": today},
                     timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    over_http = r.json()
    after = over_http[finding]
    # This test's 3 cards and 2 reports on top of what earlier tests left in the module's database.
    assert after["issued"] >= before["issued"] >= 3
    assert after["issued"] == sum(1 for row in store.issued_rows() if row["finding_code"] == finding
                                  and row["issued_at"].date().isoformat() == today)
    assert after["accepted"] == before["accepted"] + 1
    assert after["overridden"] == before["overridden"] + 1
    assert after["override_reasons"][label] == before["override_reasons"].get(label, 0) + 1
    decided = after["accepted"] + after["overridden"]
    assert after["acceptance_rate"] == round(after["accepted"] / decided, 4)
    assert over_http == store.summary(today, today)

    # The CLI once as a real process (JSON), then in-process (table, empty range).
    env = {**os.environ, "MSKCDS_DATABASE_URL": database_url}
    cli = subprocess.run([sys.executable, "-m", "cds.cli.main", "feedback-report", "--format", "json",
                          "--from", today, "--to", today], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == over_http
    monkeypatch.setenv("MSKCDS_DATABASE_URL", database_url)
    assert cli_main(["feedback-report"]) == 0
    table = capsys.readouterr().out
    line = next(ln for ln in table.splitlines() if ln.startswith(finding + " "))
    assert line.split()[1:5] == [str(after["issued"]), str(after["accepted"]),
                                 str(after["overridden"]), f"{after['acceptance_rate'] * 100:.1f}%"]
    top_label, top_n = next(iter(after["override_reasons"].items()))
    assert f"{top_label} ({top_n})" in line
    old = (datetime.now(timezone.utc) - timedelta(days=30)).date().isoformat()
    assert cli_main(["feedback-report", "--format", "json", "--to", old]) == 0
    assert json.loads(capsys.readouterr().out) == {}


@pytest.mark.parametrize("params, expression", [
    ({"from": "2026-02-30"}, "from"), ({"to": "soon"}, "to"),
    ({"from": "2026-03-02", "to": "2026-03-01"}, "from"),
])
def test_admin_summary_bad_dates_are_400(server, params, expression):
    r = requests.get(server.url("/admin/feedback-summary"), params=params, timeout=10)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == [expression]


def test_cli_bad_date_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MSKCDS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    assert cli_main(["feedback-report", "--from", "2026-1-1"]) == 2
    out = capsys.readouterr()
    assert "from" in out.err and out.out == ""


# --------------------------------------------------------------------------- other configurations
def test_summary_disabled_by_default_and_flag_mode(tmp_path):
    # Storage logic of flag mode runs on both backends in test_storage.py; here the HTTP edge.
    url = f"sqlite:///{tmp_path / 'flag.sqlite3'}"
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_DATABASE_URL": url,
           "MSKCDS_FEEDBACK_UNKNOWN_CARD": "flag"}
    with run_server(env, tmp_path, workers=1) as srv:
        r = requests.get(srv.url("/admin/feedback-summary"), timeout=10)
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        ghost = str(uuid.uuid4())
        r = post(srv, {"feedback": [{"card": ghost, "outcome": "overridden",
                                     "outcomeTimestamp": "2026-01-01T00:00:00Z"}]})
        assert r.status_code == 200, r.text
    flagged = open_store(Config.from_env({"database_url": url}, environ={})).feedback_rows()
    assert [(f["card_uuid"], f["unknown_card"]) for f in flagged] == [(ghost, True)]


def test_purge_cli(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'purge.sqlite3'}"
    store = open_store(Config.from_env({"database_url": url}, environ={}))
    assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()),
                               [make_card("vitd-deficiency"), make_card("osteoporosis")])
    monkeypatch.setenv("MSKCDS_DATABASE_URL", url)
    monkeypatch.setenv("MSKCDS_RETENTION_DAYS", "30")
    assert cli_main(["purge", "--days", "1", "--dry-run"]) == 0
    assert "would delete 0 issued-card records" in capsys.readouterr().out
    assert store.counts()["issued_cards"] == 2
    assert cli_main(["purge", "--days", "0"]) == 2
    assert cli_main(["purge"]) == 0
    assert "older than 30 days" in capsys.readouterr().out
    assert store.counts()["issued_cards"] == 2  # nothing that young is purged


def test_admin_summary_and_feedback_need_a_token_when_auth_is_on(tmp_path):
    from auth_support import new_ec_signer, write_clients

    ehr = new_ec_signer("https://ehr.example.org", "feedback-test-key")
    # admin: the summary is for clients marked so (test_tenant_separation_http: others get 403)
    clients = write_clients(tmp_path / "clients.yaml", [{"iss": ehr.iss, "jwks": ehr.jwks(),
                                                         "admin": True}])
    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
           "MSKCDS_ADMIN_SUMMARY_ENABLED": "true", "MSKCDS_REPLAY_CACHE_URL": "memory",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'auth.sqlite3'}"}
    with run_server(env, tmp_path, workers=1) as srv:
        summary = srv.url("/admin/feedback-summary")
        assert requests.get(summary, timeout=10).status_code == 401
        r = requests.get(summary, headers=ehr.bearer(summary), timeout=10)
        assert r.status_code == 200 and r.json() == {}
        # A token minted for another endpoint is not accepted here.
        other = srv.url(FEEDBACK_URL)
        assert requests.get(summary, headers=ehr.bearer(other), timeout=10).status_code == 401
        body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
        assert requests.post(other, json=body, timeout=10).status_code == 401
        r = requests.post(other, json=body, headers=ehr.bearer(other), timeout=10)
        assert r.status_code == 404  # past authentication: the card is unknown
        assert r.json()["issue"][0]["expression"] == ["feedback[0].card"]
