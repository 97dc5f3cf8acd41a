"""The feedback store through its Python API, on SQLite and on PostgreSQL."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from cds.config import Config
from cds.errors import BadRequest, NotFound
from cds.store.migrate import current_revision, migrate
from cds.store.storage import (COMMENT_ONLY, NO_REASON, UNKNOWN_FINDING, Owner, SqlStore, open_store,
                               report_key)
from feedback_support import (BACKENDS, SERVICE, TOPIC_SYSTEM, make_card,  # noqa: F401
                              new_database_url, pg_databases, pg_scratch_url)

REPO = Path(__file__).resolve().parents[3]
HEAD = "0002"


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    return new_database_url(request.param, tmp_path, request, scratch=True)


def store_for(url: str, **over) -> SqlStore:
    return open_store(Config.from_env({"database_url": url, "require_auth": False, **over},
                                      environ={}))


def issue(store: SqlStore, *cards, service: str = SERVICE) -> list[dict]:
    assert store.record_issued(service, "patient-view", str(uuid.uuid4()), list(cards)) is True
    return list(cards)


def accepted(card: dict, at: str = "2026-01-05T10:00:00Z", n: int = 0) -> dict:
    return {"card": card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][n]["uuid"]}], "outcomeTimestamp": at}


def overridden(card: dict, at: str = "2026-01-05T10:00:00Z", code: str | None = None,
               comment: str | None = None) -> dict:
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": at}
    reason = {}
    if code:
        reason["reason"] = {"system": "https://example.org/override", "code": code}
    if comment:
        reason["userComment"] = comment
    if reason:
        item["overrideReason"] = reason
    return item


def expressions(exc: BadRequest) -> list[str]:
    return [i.expression for i in exc.issues]


# --------------------------------------------------------------------------- schema and migrations
def test_migrations_create_schema_and_are_idempotent(db_url):
    assert migrate(db_url) == HEAD
    assert migrate(db_url) == HEAD  # second run: nothing to do, no error
    assert current_revision(db_url) == HEAD
    engine = create_engine(db_url)
    try:
        insp = inspect(engine)
        assert {"issued_cards", "feedback", "alembic_version"} <= set(insp.get_table_names())
        issued_cols = {c["name"] for c in insp.get_columns("issued_cards")}
        # The issued-card record holds no patient identifier and no clinical text; it names
        # the client (EHR iss and tenant) it was issued to.
        assert issued_cols == {"card_uuid", "service_id", "hook", "hook_instance", "finding_code",
                               "finding_system", "indicator", "suggestion_uuids", "issued_at",
                               "client_iss", "tenant"}
    finally:
        engine.dispose()


def test_sqlite_is_wal_with_busy_timeout(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'dir' / 'x.sqlite3'}"  # parent dirs created on first start
    store = store_for(url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert (tmp_path / "sub" / "dir" / "x.sqlite3").is_file()


def _migrate_in_child(url: str, queue) -> None:
    try:
        queue.put(("ok", migrate(url)))
    except Exception as exc:  # noqa: BLE001
        queue.put(("error", repr(exc)))


@pytest.mark.slow  # starts processes
def test_concurrent_migrations_from_several_processes(db_url):
    # fork, as gunicorn does (and no re-import per child): four migrators start at once.
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_child, args=(db_url, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [("ok", HEAD)] * 4


@pytest.mark.slow  # starts processes
def test_engine_is_not_shared_across_fork(tmp_path):
    """--preload: a store used before fork must give the child its own engine."""
    store = store_for(f"sqlite:///{tmp_path / 'f.sqlite3'}")
    card = issue(store, make_card("vitd-deficiency"))[0]
    parent_engine = store.engine
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        ok = False
        try:
            child_engine = store.engine
            store.record_feedback(SERVICE, {"feedback": [accepted(card)]})
            ok = child_engine is not parent_engine and store.counts()["feedback"] == 1
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert store.engine is parent_engine
    assert store.counts()["feedback"] == 1  # the parent sees the child's committed row


# --------------------------------------------------------------------------- issued cards
def test_record_issued_keeps_only_card_metadata(db_url):
    store = store_for(db_url)
    hook_instance = str(uuid.uuid4())
    cards = [make_card("vitd-deficiency", 2), make_card("osteoporosis", 0, indicator="info")]
    assert store.record_issued(SERVICE, "patient-view", hook_instance, cards)
    rows = {r["card_uuid"]: r for r in store.issued_rows()}
    assert set(rows) == {c["uuid"] for c in cards}
    first = rows[cards[0]["uuid"]]
    assert (first["service_id"], first["hook"], first["hook_instance"]) == (
        SERVICE, "patient-view", hook_instance)
    assert (first["finding_code"], first["finding_system"], first["indicator"]) == (
        "vitd-deficiency", TOPIC_SYSTEM, "warning")
    assert json.loads(first["suggestion_uuids"]) == [s["uuid"] for s in cards[0]["suggestions"]]
    assert json.loads(rows[cards[1]["uuid"]]["suggestion_uuids"]) == []
    assert abs(first["issued_at"] - datetime.now(timezone.utc)) < timedelta(minutes=1)
    stored_text = json.dumps([list(map(str, r.values())) for r in rows.values()])
    assert "25-hydroxyvitamin" not in stored_text and "Test card" not in stored_text


def test_no_cards_is_no_transaction(db_url):
    store = store_for(db_url)
    assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()), []) is True
    assert store.counts() == {"issued_cards": 0, "feedback": 0}


def test_database_down_still_serves_cards_and_logs(tmp_path, caplog):
    store = SqlStore(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}")  # no tables at all
    with caplog.at_level("ERROR", logger="mskcds.storage"):
        assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()),
                                   [make_card("vitd-deficiency")]) is False
    assert "issued cards not recorded" in caplog.text


# --------------------------------------------------------------------------- feedback
def test_feedback_is_stored_with_every_field(db_url):
    store = store_for(db_url)
    card = issue(store, make_card("vitd-deficiency", 2))[0]
    n = store.record_feedback(SERVICE, {"feedback": [
        accepted(card, n=1),
        overridden(card, "2026-01-05T11:00:00.123456+02:00", code="not-relevant",
                   comment="Already treated."),
    ]})
    assert n[:2] == (2, 0)
    rows = store.feedback_rows()
    assert [r["outcome"] for r in rows] == ["accepted", "overridden"]
    assert json.loads(rows[0]["accepted_suggestions"]) == [card["suggestions"][1]["uuid"]]
    assert rows[0]["issued_card"] == card["uuid"] and rows[0]["unknown_card"] is False
    assert rows[1]["override_reason_code"] == "not-relevant"
    assert rows[1]["user_comment"] == "Already treated."
    assert rows[1]["outcome_timestamp"] == datetime(2026, 1, 5, 9, 0, 0, 123456, tzinfo=timezone.utc)


def test_override_reason_coding_with_extra_fhir_fields_is_accepted(db_url):
    # A FHIR Coding may carry version/userSelected/extension; we store what we use.
    store = store_for(db_url)
    card = issue(store, make_card("sarcopenia"))[0]
    item = overridden(card, code="patient-declined")
    item["overrideReason"]["reason"].update({"display": "Patient declined", "version": "1",
                                             "userSelected": True})
    assert store.record_feedback(SERVICE, {"feedback": [item]})[:2] == (1, 0)
    assert store.feedback_rows()[0]["override_reason_code"] == "patient-declined"


def test_same_card_reported_twice_keeps_both_reports(db_url):
    store = store_for(db_url)
    card = issue(store, make_card("sarcopenia"))[0]
    store.record_feedback(SERVICE, {"feedback": [accepted(card, "2026-01-05T10:00:00Z")]})
    store.record_feedback(SERVICE, {"feedback": [overridden(card, "2026-01-05T10:05:00Z")]})
    store.record_feedback(SERVICE, {"feedback": [accepted(card, "2026-01-05T10:10:00Z")]})
    assert [r["outcome"] for r in store.feedback_rows()] == ["accepted", "overridden", "accepted"]


def test_identical_retry_is_stored_once(db_url):
    store = store_for(db_url)
    card = issue(store, make_card("sarcopenia"))[0]
    body = {"feedback": [overridden(card, code="x", comment="c")]}
    assert store.record_feedback(SERVICE, body)[:2] == (1, 0)
    # A client retry: stored once, and said so (not "stored" a second time).
    assert store.record_feedback(SERVICE, json.loads(json.dumps(body)))[:2] == (0, 1)
    assert store.counts()["feedback"] == 1
    # The same instant written another way is the same report.
    same = json.loads(json.dumps(body))
    same["feedback"][0]["outcomeTimestamp"] = "2026-01-05T11:00:00+01:00"
    assert store.record_feedback(SERVICE, same)[:2] == (0, 1)
    assert store.counts()["feedback"] == 1
    # Two equal items in one request, next to a new one: one stored, one duplicate each.
    twice = {"feedback": [overridden(card, code="y"), overridden(card, code="y")]}
    counts = store.record_feedback(SERVICE, twice)
    assert (counts.stored, counts.duplicates) == (1, 1)
    assert counts.outcomes == (("overridden", True), ("overridden", False))
    assert store.counts()["feedback"] == 2


def test_report_key_depends_on_content():
    card = make_card("x")
    from cds.hooks import wire
    a = wire.load_feedback({"feedback": [overridden(card, code="a")]})[0]
    b = wire.load_feedback({"feedback": [overridden(card, code="b")]})[0]
    assert report_key(SERVICE, a) != report_key(SERVICE, b)
    assert report_key(SERVICE, a) != report_key("other", a)


@pytest.mark.parametrize("mutate, expression", [
    (lambda i: i.pop("outcome"), "feedback[1].outcome"),
    (lambda i: i.update(outcome="ignored"), "feedback[1].outcome"),
    (lambda i: i.update(card="not-a-uuid"), "feedback[1].card"),
    (lambda i: i.pop("outcomeTimestamp"), "feedback[1].outcomeTimestamp"),
    (lambda i: i.update(outcomeTimestamp="2026-01-05T10:00:00"), "feedback[1].outcomeTimestamp"),
    (lambda i: i.update(outcomeTimestamp="2026-01-05 10:00:00Z"), "feedback[1].outcomeTimestamp"),
    (lambda i: i.update(outcomeTimestamp="2026-02-30T10:00:00Z"), "feedback[1].outcomeTimestamp"),
    (lambda i: i.update(outcomeTimestamp=1767607200), "feedback[1].outcomeTimestamp"),
    (lambda i: i.pop("acceptedSuggestions"), "feedback[1].acceptedSuggestions"),
    (lambda i: i.update(acceptedSuggestions=[]), "feedback[1].acceptedSuggestions"),
    (lambda i: i.update(acceptedSuggestions=[{}]), "feedback[1].acceptedSuggestions[0].id"),
    (lambda i: i.update(overrideReason={"userComment": "no"}), "feedback[1].overrideReason"),
])
def test_invalid_item_rejects_whole_request(db_url, mutate, expression):
    store = store_for(db_url)
    card = issue(store, make_card("vitd-deficiency"))[0]
    bad = accepted(card, "2026-01-05T10:01:00Z")
    mutate(bad)
    with pytest.raises(BadRequest) as err:
        store.record_feedback(SERVICE, {"feedback": [accepted(card), bad]})
    assert expression in expressions(err.value)
    assert store.counts()["feedback"] == 0  # the valid first item was not stored either


@pytest.mark.parametrize("body, expression", [
    ({}, "feedback"), ({"feedback": []}, "feedback"), ({"feedback": "x"}, "feedback"),
    ({"feedback": ["x"]}, "feedback[0]"), ([], None),
])
def test_malformed_envelope(db_url, body, expression):
    store = store_for(db_url)
    with pytest.raises(BadRequest) as err:
        store.record_feedback(SERVICE, body)
    assert expression in expressions(err.value)


def test_unknown_card_rejected_by_default(db_url):
    store = store_for(db_url)
    card = issue(store, make_card("osteoporosis"))[0]
    ghost = make_card("osteoporosis")  # never issued
    with pytest.raises(NotFound) as err:
        store.record_feedback(SERVICE, {"feedback": [accepted(card), overridden(ghost)]})
    assert expressions(err.value) == ["feedback[1].card"]
    assert store.counts()["feedback"] == 0


def test_another_clients_card_is_an_unknown_card_and_reports_split_by_owner(db_url):
    store = store_for(db_url)
    a, a2, b = Owner("https://a.example", "t1"), Owner("https://a.example", "t2"), Owner("https://b.example")
    card = make_card("osteoporosis")
    assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()), [card], owner=a)
    for other in (b, a2):
        with pytest.raises(NotFound) as err:
            store.record_feedback(SERVICE, {"feedback": [accepted(card)]}, owner=other)
        assert expressions(err.value) == ["feedback[0].card"]
        assert "is not a card this service issued" in err.value.issues[0].diagnostics
    assert store.counts()["feedback"] == 0
    assert store.record_feedback(SERVICE, {"feedback": [accepted(card)]}, owner=a).stored == 1
    assert store.summary(None, None, client=a.iss)["osteoporosis"]["accepted"] == 1
    assert store.summary(None, None, tenant="t1")["osteoporosis"]["accepted"] == 1
    assert store.summary(None, None, client=b.iss) == {}
    assert store.summary(None, None, tenant="t2") == {}


def test_unknown_card_flagged_when_configured(db_url):
    store = store_for(db_url, feedback_unknown_card="flag")
    ghost = make_card("osteoporosis")
    assert store.record_feedback(SERVICE, {"feedback": [overridden(ghost), accepted(ghost)]})[:2] \
        == (2, 0)
    rows = store.feedback_rows()
    assert [(r["unknown_card"], r["issued_card"], r["card_uuid"]) for r in rows] == [
        (True, None, ghost["uuid"])] * 2
    report = store.summary(None, None)
    assert report[UNKNOWN_FINDING]["overridden"] == 1 and report[UNKNOWN_FINDING]["accepted"] == 1


def test_card_from_another_service_rejected(db_url):
    store = store_for(db_url, feedback_unknown_card="flag")  # even in flag mode
    card = issue(store, make_card("osteoporosis"), service="another-service")[0]
    with pytest.raises(BadRequest) as err:
        store.record_feedback(SERVICE, {"feedback": [overridden(card)]})
    assert expressions(err.value) == ["feedback[0].card"]
    assert "another-service" in err.value.issues[0].diagnostics
    assert store.counts()["feedback"] == 0


def test_accepted_suggestion_must_belong_to_the_card(db_url):
    store = store_for(db_url)
    card, other = issue(store, make_card("sarcopenia", 2), make_card("sarcopenia", 1))
    item = accepted(card)
    item["acceptedSuggestions"].append({"id": other["suggestions"][0]["uuid"]})
    with pytest.raises(BadRequest) as err:
        store.record_feedback(SERVICE, {"feedback": [item]})
    assert expressions(err.value) == ["feedback[0].acceptedSuggestions[1].id"]
    assert store.counts()["feedback"] == 0


# --------------------------------------------------------------------------- report
def test_summary_counts_per_finding(db_url):
    store = store_for(db_url)
    d1, d2, d3 = issue(store, *[make_card("vitd-deficiency") for _ in range(3)])
    (o1,) = issue(store, make_card("osteoporosis"))
    issue(store, make_card("sarcopenia"))
    store.record_feedback(SERVICE, {"feedback": [
        accepted(d1), accepted(d2), overridden(d3, code="r1"),
        overridden(o1, "2026-01-05T10:00:00Z", code="r2"),
        overridden(o1, "2026-01-05T10:01:00Z", code="r2"),
        overridden(o1, "2026-01-05T10:02:00Z", code="r1"),
        overridden(o1, "2026-01-05T10:03:00Z", comment="text only"),
        overridden(o1, "2026-01-05T10:04:00Z"),
    ]})
    report = store.summary(None, None)
    assert set(report) == {"vitd-deficiency", "osteoporosis", "sarcopenia"}
    assert report["vitd-deficiency"] == {
        "issued": 3, "accepted": 2, "overridden": 1, "acceptance_rate": round(2 / 3, 4),
        "override_reasons": {"https://example.org/override|r1": 1}}
    assert report["osteoporosis"]["acceptance_rate"] == 0.0
    # Most frequent first; ties in label order.
    assert list(report["osteoporosis"]["override_reasons"].items()) == [
        ("https://example.org/override|r2", 2), (COMMENT_ONLY, 1), (NO_REASON, 1),
        ("https://example.org/override|r1", 1)]
    assert report["sarcopenia"] == {"issued": 1, "accepted": 0, "overridden": 0,
                                    "acceptance_rate": None, "override_reasons": {}}


def test_summary_date_range_uses_issue_time(db_url):
    store = store_for(db_url)
    card = issue(store, make_card("vitd-deficiency"))[0]
    store.record_feedback(SERVICE, {"feedback": [accepted(card, "2019-01-01T00:00:00Z")]})
    today = datetime.now(timezone.utc).date()
    assert store.summary(today.isoformat(), today.isoformat())["vitd-deficiency"]["accepted"] == 1
    assert store.summary(None, (today - timedelta(days=1)).isoformat()) == {}
    assert store.summary((today + timedelta(days=1)).isoformat(), None) == {}
    since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert store.summary(since, None)["vitd-deficiency"]["issued"] == 1


@pytest.mark.parametrize("start, end, expression", [
    ("2026-13-01", None, "from"), ("yesterday", None, "from"), (None, "2026-02-30", "to"),
    ("2026-01-01T10:00:00", None, "from"), ("2026-03-01", "2026-02-01", "from"),
])
def test_summary_bad_dates(tmp_path, start, end, expression):
    store = store_for(f"sqlite:///{tmp_path / 'd.sqlite3'}")
    with pytest.raises(BadRequest) as err:
        store.summary(start, end)
    assert expressions(err.value) == [expression]


# --------------------------------------------------------------------------- retention
def test_purge_deletes_old_cards_with_their_feedback(db_url):
    store = store_for(db_url, feedback_unknown_card="flag")
    old, kept = issue(store, make_card("vitd-deficiency"), make_card("vitd-deficiency"))
    ghost = make_card("osteoporosis")
    store.record_feedback(SERVICE, {"feedback": [accepted(old), overridden(old), accepted(kept),
                                                 overridden(ghost)]})
    # Age the first card by 400 days (as if issued then).
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE issued_cards SET issued_at = :t WHERE card_uuid = :u"),
                     {"t": datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=400),
                      "u": old["uuid"]})
    dry = store.purge(365, dry_run=True)
    assert (dry["issued_cards"], dry["feedback"]) == (1, 2)
    assert store.counts() == {"issued_cards": 2, "feedback": 4}
    done = store.purge(365)
    assert (done["issued_cards"], done["feedback"]) == (1, 2)
    assert {r["card_uuid"] for r in store.issued_rows()} == {kept["uuid"]}
    assert sorted(r["card_uuid"] for r in store.feedback_rows()) == sorted([kept["uuid"], ghost["uuid"]])
    # Flagged feedback goes by its receipt time.
    later = store.purge(1, now=datetime.now(timezone.utc) + timedelta(days=2))
    assert (later["issued_cards"], later["feedback"]) == (1, 2)
    assert store.counts() == {"issued_cards": 0, "feedback": 0}
    # Feedback on a purged card is feedback on an unknown card.
    strict = store_for(db_url)
    with pytest.raises(NotFound):
        strict.record_feedback(SERVICE, {"feedback": [accepted(kept, "2026-02-01T00:00:00Z")]})


def test_purge_refuses_zero_days(tmp_path):
    from cds.config import ConfigError
    store = store_for(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    with pytest.raises(ConfigError):
        store.purge(0)


# --------------------------------------------------------------------------- packaging
@pytest.mark.slow  # starts processes
def test_plain_install_ships_the_migrations(tmp_path):
    """A wheel (not the editable checkout) carries the migrations, and they run from it."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True,
                           timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("mskcds-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cds/store/migrations/env.py", "cds/store/migrations/script.py.mako",
            "cds/store/migrations/versions/0001_issued_cards_and_feedback.py",
            "cds/store/migrations/versions/0002_issued_card_owner.py"} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    db = tmp_path / "plain.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(site), "MSKCDS_DATABASE_URL": f"sqlite:///{db}"}
    out = subprocess.run([sys.executable, "-c", "import cds, sys; from cds.cli.main import main; "
                          "assert cds.__file__.startswith(sys.argv[1]), cds.__file__; "
                          "sys.exit(main(['migrate']))", str(site)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"revision {HEAD}" in out.stdout


# --------------------------------------------------------------------------- failures
def test_feedback_when_the_database_fails_is_503_and_retryable(tmp_path):
    from cds.store.storage import StorageUnavailable

    store = SqlStore(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}")  # no tables
    card = make_card("vitd-deficiency")
    with pytest.raises(StorageUnavailable) as err:
        store.record_feedback(SERVICE, {"feedback": [overridden(card)]})
    assert err.value.status == 503
    assert err.value.body()["issue"][0]["code"] == "transient"


def test_unreachable_database_stops_start_up_without_leaking_the_password():
    from cds import create_app
    from cds.config import ConfigError

    with pytest.raises(ConfigError) as err:
        create_app({"require_auth": False,
                    "database_url": "postgresql+psycopg://mskcds:s3cret-pw@127.0.0.1:1/mskcds"})
    assert "s3cret-pw" not in str(err.value)
    assert "127.0.0.1:1" in str(err.value)


def test_unsupported_database_url_is_a_config_error():
    from cds.config import ConfigError

    with pytest.raises(ConfigError):
        open_store(Config.from_env({"database_url": "mysql://x@localhost/db"}, environ={}))
    with pytest.raises(ConfigError):
        open_store(Config.from_env({"database_url": "sqlite://"}, environ={}))


@pytest.mark.postgres
def test_plain_postgresql_url_uses_psycopg3(pg_databases):
    url = pg_databases.create().replace("postgresql+psycopg://", "postgresql://")
    store = open_store(Config.from_env({"database_url": url}, environ={}))
    assert store.engine.dialect.driver == "psycopg"
    assert store.counts() == {"issued_cards": 0, "feedback": 0}
