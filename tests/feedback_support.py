"""Helpers shared by the feedback/storage tests: databases (SQLite, PostgreSQL) and cards."""
from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from cds.hooks import wire

POSTGRES_ENV = "MSKCDS_TEST_POSTGRES_URL"
TOPIC_SYSTEM = "https://example.org/mskcds-test/finding"  # test-only topic system
SERVICE = "bone-muscle-health"


def postgres_base_url() -> str:
    """The CI PostgreSQL URL, or skip (fail when MSKCDS_REQUIRE_POSTGRES=1)."""
    url = os.environ.get(POSTGRES_ENV)
    required = os.environ.get("MSKCDS_REQUIRE_POSTGRES") == "1"
    reason = None
    if not url:
        reason = (f"no PostgreSQL server: set {POSTGRES_ENV}=postgresql+psycopg://user:pw@host:port/db "
                  "(.ci/run starts one)")
    else:
        from sqlalchemy import create_engine, text
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            reason = f"PostgreSQL at {POSTGRES_ENV} is not reachable: {exc.__class__.__name__}"
        finally:
            engine.dispose()
    if reason:
        if required:
            pytest.fail(f"MSKCDS_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return url  # type: ignore[return-value]


class PostgresDatabases:
    """Creates throw-away databases on the test server (the CI user has CREATEDB)."""

    def __init__(self, base_url: str):
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.base = make_url(base_url)
        self.admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def create(self) -> str:
        from sqlalchemy import text

        name = f"mskcds_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.base.set(database=name).render_as_string(hide_password=False)

    def reset(self, url: str) -> str:
        """Empty a database made by :meth:`create` (cheaper than a new database per test)."""
        from sqlalchemy import create_engine, text

        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
        finally:
            engine.dispose()
        return url

    def drop_all(self) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases]:
    dbs = PostgresDatabases(postgres_base_url())
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture(scope="session")
def pg_scratch_url(pg_databases: PostgresDatabases) -> str:
    return pg_databases.create()


def new_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest, *,
                     scratch: bool = False) -> str:
    """A fresh, empty database. ``scratch``: PostgreSQL reuses one database, emptied."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    dbs = request.getfixturevalue("pg_databases")
    if scratch:
        return dbs.reset(request.getfixturevalue("pg_scratch_url"))
    return dbs.create()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# --------------------------------------------------------------------------- cards
def wait_on_record(store: Any, cards: list[dict[str, Any]], timeout: float = 15.0) -> None:
    """Wait until the service's issued-card writer has put ``cards`` in the database.

    The service answers first and writes the records moments later (off the request
    path, cds/store/writer.py); feedback finds a queued record at once, but a test that
    reads the database directly waits for the write."""
    import time

    wanted = {c["uuid"] for c in cards}
    deadline = time.monotonic() + timeout
    while True:
        on_record = {r["card_uuid"] for r in store.issued_rows()}
        if wanted <= on_record:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(wanted - on_record)} of {len(wanted)} issued cards were "
                                 f"not written within {timeout} s")
        time.sleep(0.05)


def make_card(finding: str, suggestions: int = 1, indicator: str = "warning") -> dict[str, Any]:
    """A spec-valid card (checked with the outgoing wire schema) for ``finding``."""
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": f"Test card for {finding}",
        "indicator": indicator,
        "detail": "Serum 25-hydroxyvitamin D 8 ng/mL",  # a clinical value that must NOT be stored
        "source": {"label": "mskcds tests", "topic": {"system": TOPIC_SYSTEM, "code": finding}},
    }
    if suggestions:
        card["suggestions"] = [{"label": f"Suggestion {i + 1}", "uuid": str(uuid.uuid4())}
                               for i in range(suggestions)]
        card["selectionBehavior"] = "at-most-one"
    wire.check_card(card)
    return card


def substitute(feedback_doc: dict[str, Any], cards: list[dict[str, Any]]) -> dict[str, Any]:
    """Replay an external feedback document with our card (and suggestion) uuids.

    Each distinct foreign card uuid is mapped, in order of appearance, to the
    next of ``cards``; each foreign suggestion id to a suggestion of that card.
    """
    doc = copy.deepcopy(feedback_doc)
    card_map: dict[str, dict[str, Any]] = {}
    for item in doc["feedback"]:
        foreign = item["card"]
        if foreign not in card_map:
            card_map[foreign] = cards[len(card_map)]
        ours = card_map[foreign]
        item["card"] = ours["uuid"]
        for j, accepted in enumerate(item.get("acceptedSuggestions") or []):
            accepted["id"] = ours["suggestions"][j]["uuid"]
    return doc


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
