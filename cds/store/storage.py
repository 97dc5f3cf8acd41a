"""Durable storage of issued cards and clinician feedback (CDS Hooks 2.0 feedback).

Two tables (schema in ``cds/migrations``, applied with Alembic):

* ``issued_cards``: one row per card this service answered with: card uuid,
  service id, hook, hookInstance, finding code (``source.topic``), indicator,
  suggestion uuids, issue time. Nothing else: no patient identifier, no
  clinical value.
* ``feedback``: one row per feedback report. A report is kept as the client
  sent it (outcome, accepted suggestion ids, override reason coding and
  comment, outcomeTimestamp) plus the time we received it. The same card may
  be reported many times and each distinct report is kept; a report that is
  byte-for-byte the same as one already stored (a client retrying a post whose
  answer it never saw) is stored once (``report_key``, a hash of its content).

Engines are per process: ``open_store`` runs in ``create_app``, which gunicorn
``--preload`` runs before it forks its workers, so the store migrates the
database there (under a lock, in case several processes start together),
disposes of the engine, and every process afterwards builds its own engine on
first use. No connection is ever shared across a fork.

SQLite (the default) runs in WAL mode with a busy timeout and ``BEGIN
IMMEDIATE`` write transactions, so concurrent workers queue for the write lock
instead of failing on a lock upgrade. Feedback commits with ``synchronous=FULL``
(a report acknowledged with 2xx survives a crash of the process or the
machine); the hot-path issued-card insert with ``NORMAL`` (see
``ISSUED_SYNCHRONOUS``). PostgreSQL is
used when ``MSKCDS_DATABASE_URL`` is ``postgresql+psycopg://...``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from time import monotonic, sleep
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

from sqlalchemy import (Boolean, Column, DateTime, ForeignKey, Index, Integer, MetaData, String,
                        Table, Text, false, func, select, text)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (ArgumentError, DBAPIError, InterfaceError, OperationalError,
                            SQLAlchemyError)
from sqlalchemy.types import TypeDecorator

from cds.hooks import wire
from cds.config import Config, ConfigError
from cds.store.db import ProcessLocalEngine, build_engine, describe_url, upsert_insert
from cds.store.migrate import migrate
from cds.store.writer import IssuedCardWriter, SharedClock
from cds.errors import BadRequest, Issue, NotFound, ServiceError, ServiceUnavailable

log = logging.getLogger("mskcds.storage")

#: SQLite sync level of the hot-path issued-card insert. In WAL mode NORMAL survives a killed
#: process (what gunicorn workers meet) but an OS crash or power cut may lose the last few
#: records; it costs ~0.5-1 ms per call where FULL (an fsync per commit) costs ~6 ms (see
#: benchmarks/bench_storage.py). Feedback, the evidence we must not lose, always commits FULL.
ISSUED_SYNCHRONOUS = "NORMAL"
#: Report key of feedback whose card is not (or no longer) on record.
UNKNOWN_FINDING = "(unknown card)"
NO_REASON = "(no reason given)"
COMMENT_ONLY = "(comment only)"
#: Seconds after any worker last found the database unavailable during which feedback on
#: an unknown card is a 503 (retry) rather than a 400: its record may still be queued in
#: another worker's issued-card writer, written moments after the database came back. The
#: time is shared by the workers (``SharedClock``): the worker that answers the feedback
#: may never have met the outage itself.
UNKNOWN_CARD_GRACE_SECONDS = 30.0
#: How long feedback waits for a card not on file yet: any such card for up to
#: ISSUED_WAIT_MIN_SECONDS (another worker's writer may hold it for a few milliseconds; under
#: load, a few hundred), and one that some worker's queue still holds (``writer.queued``) for
#: up to ISSUED_WAIT_SECONDS (seconds when the database is slow or just restarted). Past
#: that, a card still held is a 503 (retry), one no worker holds is unknown.
ISSUED_WAIT_MIN_SECONDS = 0.5
ISSUED_WAIT_SECONDS = 5.0


class DatabaseUnavailable(ConfigError):
    """At start-up: the database cannot be reached or opened (a run-time failure, not a
    wrong setting as such; the service cannot start without it)."""


class StorageUnavailable(ServiceUnavailable):
    """The database could not be reached or stayed locked; the client may retry (503,
    ``Retry-After``)."""


# --------------------------------------------------------------------------- schema
class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out; stored as naive UTC on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


metadata = MetaData()

issued_cards = Table(
    "issued_cards", metadata,
    Column("card_uuid", String(36), primary_key=True),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(64), nullable=False),
    Column("hook_instance", String(36), nullable=False),
    Column("finding_code", String(128), nullable=True),
    Column("finding_system", String(255), nullable=True),
    Column("indicator", String(16), nullable=False),
    Column("suggestion_uuids", Text, nullable=False),  # JSON list of uuid strings
    Column("issued_at", UTCDateTime, nullable=False),
    # The authenticated client the card was issued to (NULL with authentication off).
    Column("client_iss", String(255), nullable=True),
    Column("tenant", String(255), nullable=True),
    Index("ix_issued_cards_issued_at", "issued_at"),
    Index("ix_issued_cards_client", "client_iss", "tenant"),
)

feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("report_key", String(64), nullable=False, unique=True),
    Column("card_uuid", String(36), nullable=False),
    # Set when the card is on record (NULL for accept-and-flag reports); deleting
    # the card deletes its feedback (retention).
    Column("issued_card", String(36), ForeignKey("issued_cards.card_uuid", ondelete="CASCADE"),
           nullable=True),
    Column("service_id", String(64), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),  # JSON list of uuid strings
    Column("override_reason_system", String(255), nullable=True),
    Column("override_reason_code", String(128), nullable=True),
    Column("override_reason_display", String(255), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("unknown_card", Boolean, nullable=False, default=False),
    Index("ix_feedback_card_uuid", "card_uuid"),
    Index("ix_feedback_issued_card", "issued_card"),
    Index("ix_feedback_received_at", "received_at"),
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- database errors
def explain_database_error(exc: Exception, url: str | None) -> str:
    """One line for an operator: what failed, on which database (no password), what to do."""
    if isinstance(exc, ArgumentError):
        return ("MSKCDS_DATABASE_URL is not a database URL: give sqlite:////absolute/path/"
                "mskcds.sqlite3 or postgresql+psycopg://user:password@host:5432/dbname")
    where = describe_url(url) if url else "the database"
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    text = (detail[0] if detail else exc.__class__.__name__)[:200]
    try:
        password = make_url(url).password if url else None
    except ArgumentError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    if isinstance(exc, OperationalError):
        hint = ("is the database server running and reachable?" if not (url or "").startswith(
            "sqlite") else "is MSKCDS_DATA_DIR (or the file's directory) writable?")
        return (f"cannot use the database {where}: {text}. Check MSKCDS_DATABASE_URL; {hint}")
    return f"the database {where} failed: {exc.__class__.__name__}: {text}"


# --------------------------------------------------------------------------- dates
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class DateRange:
    start: datetime | None  # inclusive
    end: datetime | None    # exclusive
    #: the bounds as the user gave them (a --to day is shown as that day, included)
    given_start: str | None = None
    given_end: str | None = None

    def describe(self) -> str:
        """The period in words, e.g. 'from 2026-01-01 to 2026-03-31 (inclusive)'."""
        start = self.given_start or (self.start.isoformat() if self.start else None)
        end = self.given_end or (self.end.isoformat() if self.end else None)
        if start and end:
            return f"from {start} to {end}" + (" (inclusive)" if _DATE.match(end) else "")
        if start:
            return f"from {start} on"
        if end:
            return f"up to {end}" + (" (inclusive)" if _DATE.match(end) else "")
        return "at any time"


def parse_bound(value: str | None, name: str, *, end: bool) -> datetime | None:
    """``YYYY-MM-DD`` (a whole UTC day; ``to`` includes that day) or an RFC 3339 date-time."""
    if value is None or value == "":
        return None
    text_value = value.strip()
    try:
        if _DATE.match(text_value):
            day = date.fromisoformat(text_value)
            moment = datetime.combine(day, time(0), tzinfo=timezone.utc)
            return moment + timedelta(days=1) if end else moment
        if not wire.RFC3339.match(text_value):
            raise ValueError("not RFC 3339")
        return datetime.fromisoformat(text_value.replace("z", "Z")).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: 9999-12-31 (+1 day), 0001-01-01T00:00+01:00
        raise BadRequest(Issue(f"{name}: {value[:40]!r} is not a date (YYYY-MM-DD) or an RFC 3339 "
                               "date-time with a time zone", expression=name)) from None


def parse_range(start: str | None, end: str | None) -> DateRange:
    rng = DateRange(parse_bound(start, "from", end=False), parse_bound(end, "to", end=True),
                    given_start=start.strip() if start else None,
                    given_end=end.strip() if end else None)
    if rng.start and rng.end and rng.start >= rng.end:
        raise BadRequest(Issue("from: must be before to", expression="from"))
    return rng


# --------------------------------------------------------------------------- the store
def _canonical_uuid(value: Any) -> str:
    return str(uuid.UUID(str(value)))


@dataclass(frozen=True)
class Owner:
    """Who a card was issued to: the authenticated client's ``iss`` and ``tenant`` claim.

    ``None`` instead of an Owner means authentication is off (one local user)."""

    iss: str
    tenant: str | None = None


def _log_not_recorded(cards: list[dict[str, Any]], exc: Exception) -> None:
    log.error("issued cards not recorded", extra={"fields": {
        "cards": len(cards), "error": exc.__class__.__name__}})


def _issued_rows(service_id: str, hook: str, hook_instance: str, cards: list[dict[str, Any]],
                 owner: Owner | None) -> list[dict[str, Any]] | None:
    """The issued-card rows of one answer (one timestamp), or None (logged) when a card
    cannot become a row; written now (record_issued) or queued (queue_issued)."""
    now = utcnow()
    try:
        return [_issued_row(service_id, hook, hook_instance, card, now, owner) for card in cards]
    except (KeyError, TypeError, ValueError) as exc:
        _log_not_recorded(cards, exc)
        return None


def _issued_row(service_id: str, hook: str, hook_instance: str, card: Mapping[str, Any],
                now: datetime, owner: Owner | None = None) -> dict[str, Any]:
    topic = (card.get("source") or {}).get("topic") or {}
    suggestions = [_canonical_uuid(s["uuid"]) for s in card.get("suggestions") or []]
    return {"card_uuid": _canonical_uuid(card["uuid"]), "service_id": service_id, "hook": hook,
            "hook_instance": _canonical_uuid(hook_instance),
            "finding_code": topic.get("code"), "finding_system": topic.get("system"),
            "indicator": card["indicator"], "suggestion_uuids": json.dumps(suggestions),
            "issued_at": now, "client_iss": owner.iss if owner else None,
            "tenant": owner.tenant if owner else None}


def report_key(service_id: str, item: Mapping[str, Any]) -> str:
    """Content hash of one validated feedback item: equal reports (retries) get equal keys."""
    reason = item.get("overrideReason") or {}
    coding = reason.get("reason") or {}
    canonical = {
        "service": service_id,
        "card": str(item["card"]),
        "outcome": item["outcome"],
        "at": item["outcomeTimestamp"].astimezone(timezone.utc).isoformat(),
        "accepted": sorted(str(s["id"]) for s in item.get("acceptedSuggestions") or []),
        "reason": [coding.get("system"), coding.get("code")],
        "comment": reason.get("userComment"),
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _by_item(issue: Issue) -> int:
    """Issues in request order (a stable sort keeps each item's own issues in theirs)."""
    m = re.match(r"feedback\[(\d+)\]", issue.expression or "")
    return int(m.group(1)) if m else -1


class FeedbackCounts(NamedTuple):
    stored: int
    duplicates: int
    #: (outcome, newly stored) per item, in request order
    outcomes: tuple[tuple[str, bool], ...] = ()


class SqlStore:
    """Issued cards and feedback in a SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str, *, unknown_card: str = "reject", issued_queue_max: int = 0):
        self.url = url
        self.unknown_card = unknown_card
        self._engines = ProcessLocalEngine(lambda: build_engine(url))
        #: When a worker of this server last found the database unavailable (shared by the
        #: workers gunicorn forks from the process that built the store).
        self._unavailable_at = SharedClock()
        #: Issued-card records queued off the request path (None: written in the request).
        self.writer = (IssuedCardWriter(self._insert_issued, capacity=issued_queue_max,
                                        transient=(StorageUnavailable,))
                       if issued_queue_max > 0 else None)

    # ------------------------------------------------------------- engine per process
    @property
    def engine(self) -> Engine:
        return self._engines.get()

    def dispose(self) -> None:
        self._engines.dispose()

    @contextlib.contextmanager
    def _transaction(self, **options: Any) -> Iterator[Connection]:
        """One transaction; a database that is down or stays locked is a 503 (retry later)."""
        try:
            with self.engine.connect() as conn:
                if options:
                    conn = conn.execution_options(**options)
                with conn.begin():
                    yield conn
        except ServiceError:
            raise
        except DBAPIError as exc:
            # A server that is down, restarting, or dropped the connection (psycopg's
            # InterfaceError on a closed connection; any DBAPI error SQLAlchemy marked as a
            # disconnect). Other DBAPI errors (a refused row) are not an outage.
            if not (isinstance(exc, (OperationalError, InterfaceError))
                    or exc.connection_invalidated):
                raise
            self._unavailable_at.mark()
            log.error("feedback database unavailable: %s", exc.__class__.__name__,
                      extra={"fields": {"store": "database"}})
            raise StorageUnavailable(Issue("The feedback database is busy or unavailable; "
                                           "retry later.", code="transient")) from None

    def _write(self, **options: Any) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE; ``sqlite_synchronous`` option)."""
        return self._transaction(**options)

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        """A read transaction (SQLite: BEGIN DEFERRED, no write lock)."""
        return self._transaction(sqlite_begin="DEFERRED")

    def ping(self) -> None:
        """Raise unless the database answers and holds our tables (readiness)."""
        with self._read() as conn:
            conn.execute(select(issued_cards.c.card_uuid).limit(0)).all()
            conn.execute(select(feedback.c.id).limit(0)).all()

    # ------------------------------------------------------------- hot path
    def record_issued(self, service_id: str, hook: str, hook_instance: str,
                      cards: list[dict[str, Any]], owner: Owner | None = None) -> bool:
        """Record the cards of one answer: one short transaction, one executemany.

        On the hot path of every service call. If the database is unavailable
        the cards are still served (advice to the clinician comes first) and the
        failure is logged; feedback on those cards will then be treated as
        feedback on an unknown card. Returns whether the cards were recorded.
        """
        if not cards:
            return True
        rows = _issued_rows(service_id, hook, hook_instance, cards, owner)
        if rows is None:
            return False
        try:
            with self._write(sqlite_synchronous=ISSUED_SYNCHRONOUS) as conn:
                conn.execute(issued_cards.insert(), rows)
        except (StorageUnavailable, SQLAlchemyError, KeyError, TypeError, ValueError) as exc:
            _log_not_recorded(cards, exc)
            return False
        return True

    def queue_issued(self, service_id: str, hook: str, hook_instance: str,
                     cards: list[dict[str, Any]], owner: Owner | None = None) -> bool:
        """Record the cards of one answer off the request path (``writer``), or in it when
        there is no writer. Returns whether the records were taken (queued or written)."""
        if self.writer is None:
            return self.record_issued(service_id, hook, hook_instance, cards, owner)
        if not cards:
            return True
        rows = _issued_rows(service_id, hook, hook_instance, cards, owner)
        if rows is None:
            return False
        return self.writer.submit(rows) == len(rows)

    def _insert_issued(self, rows: list[dict[str, Any]]) -> None:
        """One transaction for a batch of issued-card rows; a row already there is kept."""
        with self._write(sqlite_synchronous=ISSUED_SYNCHRONOUS) as conn:
            conn.execute(_insert_ignore(conn, issued_cards, "card_uuid"), rows)

    def recently_unavailable(self) -> bool:
        return self._unavailable_at.within(UNKNOWN_CARD_GRACE_SECONDS)

    # ------------------------------------------------------------- feedback
    def _await_issued(self, cards: list[str]) -> None:
        """Wait for cards not on file yet: any for ``ISSUED_WAIT_MIN_SECONDS``, those some
        worker's queue still holds (``writer.queued``, shared by the workers) for up to
        ``ISSUED_WAIT_SECONDS``.

        With several workers, a card issued by one may still sit in that worker's writer
        queue when its feedback reaches another worker; refused then, prompt feedback would be
        "unknown card". Read transactions only (no write lock is held, so the other worker's
        writer can commit)."""
        if self.writer is None or not cards:
            return
        started = monotonic()
        waiting = set(cards) - set(self.writer.pending(cards))
        while waiting:
            # Asked before the database is read: a record committed after this answer is
            # on file when the database is read below.
            queued = {c for c in waiting if self.writer.queued.maybe_queued(c)}
            with self._read() as conn:
                on_file = {row.card_uuid for chunk in _chunks(sorted(waiting), 500)
                           for row in conn.execute(select(issued_cards.c.card_uuid)
                                                   .where(issued_cards.c.card_uuid.in_(chunk)))}
            waiting -= on_file
            elapsed = monotonic() - started
            if elapsed >= ISSUED_WAIT_MIN_SECONDS:
                waiting &= queued
            if not waiting or elapsed >= ISSUED_WAIT_SECONDS:
                return
            sleep(0.02 if queued else 0.05)

    def record_feedback(self, service_id: str, payload: Any,
                        owner: Owner | None = None) -> "FeedbackCounts":
        """Validate and store one feedback request, all or nothing. Returns how many items
        were stored and how many were duplicates of reports already stored.

        With an ``owner`` (authentication on), a card issued to another client or tenant
        is treated exactly as a card never issued: the answer says nothing about it.
        """
        items = wire.load_feedback(payload)
        self._await_issued(sorted({str(item["card"]) for item in items}))
        now = utcnow()
        wanted = sorted({str(item["card"]) for item in items})
        # This process's queued records, asked BEFORE the database is read: a record the
        # writer commits between the two is then in one or the other. (Asked after, it could
        # be in neither: the read before its commit, the queue after, and its feedback
        # refused as an unknown card.)
        queued_before = self.writer.pending(wanted) if self.writer else {}
        with self._write() as conn:
            known: dict[str, Any] = {}
            for chunk in _chunks(wanted, 500):
                for row in conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.service_id,
                                               issued_cards.c.suggestion_uuids,
                                               issued_cards.c.client_iss, issued_cards.c.tenant)
                                        .where(issued_cards.c.card_uuid.in_(chunk))):
                    if owner is None or (row.client_iss, row.tenant) == (owner.iss, owner.tenant):
                        known[row.card_uuid] = row
            # The writer before the database: a card whose record is still queued in this
            # process is written here, in this transaction, so its feedback can refer to it
            # (and, like a record on file, it is known only to the client it was issued to).
            missing = [w for w in wanted if w not in known]
            queued = {k: queued_before[k] for k in missing if k in queued_before}
            if queued:
                conn.execute(_insert_ignore(conn, issued_cards, "card_uuid"), list(queued.values()))
                for card_id, record in queued.items():
                    if owner is None or (record["client_iss"], record["tenant"]) == (owner.iss,
                                                                                    owner.tenant):
                        known[card_id] = _Known(record["card_uuid"], record["service_id"],
                                                record["suggestion_uuids"])
            issues: list[Issue] = []
            unknown_issues: list[Issue] = []
            unknown = 0
            rows: list[dict[str, Any]] = []
            for index, item in enumerate(items):
                where = f"feedback[{index}]"
                card_id = str(item["card"])
                card = known.get(card_id)
                if card is None and self.unknown_card == "reject":
                    unknown += 1
                    unknown_issues.append(Issue(f"{where}.card: {card_id} is not a card this "
                                                "service issued (or its record has passed "
                                                "retention)", expression=f"{where}.card",
                                                code="not-found"))
                    continue
                if card is not None and card.service_id != service_id:
                    issues.append(Issue(f"{where}.card: {card_id} was issued by service "
                                        f"{card.service_id!r}, not {service_id!r}",
                                        expression=f"{where}.card"))
                    continue
                accepted = [str(s["id"]) for s in item.get("acceptedSuggestions") or []]
                if card is not None:
                    offered = set(json.loads(card.suggestion_uuids))
                    for j, sid in enumerate(accepted):
                        if sid not in offered:
                            issues.append(Issue(
                                f"{where}.acceptedSuggestions[{j}].id: {sid} is not a suggestion "
                                f"of card {card_id}", expression=f"{where}.acceptedSuggestions[{j}].id"))
                reason = item.get("overrideReason") or {}
                coding = reason.get("reason") or {}
                issues.extend(_unstorable(where, coding, reason))
                rows.append({
                    "report_key": report_key(service_id, item), "card_uuid": card_id,
                    "issued_card": card_id if card is not None else None,
                    "service_id": service_id, "outcome": item["outcome"],
                    "accepted_suggestions": json.dumps(accepted) if accepted else None,
                    "override_reason_system": coding.get("system"),
                    "override_reason_code": coding.get("code"),
                    "override_reason_display": coding.get("display"),
                    "user_comment": reason.get("userComment"),
                    "outcome_timestamp": item["outcomeTimestamp"], "received_at": now,
                    "unknown_card": card is None,
                })
            writer = self.writer
            still_queued = writer is not None and any(
                writer.queued.maybe_queued(str(item["card"])) for item in items
                if str(item["card"]) not in known)
            if unknown and (still_queued or self.recently_unavailable()):
                # Its record is still queued in another worker (or, right after an outage,
                # may have been): not unknown yet.
                raise StorageUnavailable(Issue(
                    "The card record is still being written; retry shortly.",
                    code="transient"), retry_after=2)
            if issues:  # rolls the transaction back: nothing is stored
                raise BadRequest(sorted(issues + unknown_issues, key=_by_item))
            if unknown_issues:
                # Every problem is a card not on record (or another client's: answered alike).
                raise NotFound(unknown_issues)
            inserted = {row.report_key for row in conn.execute(
                _insert_ignore(conn, feedback, "report_key").returning(feedback.c.report_key),
                rows)}
        flagged = sum(1 for r in rows if r["unknown_card"] and r["report_key"] in inserted)
        if flagged:
            log.warning("stored feedback for unknown cards (flagged)",
                        extra={"fields": {"flagged": flagged}})
        # A report equal to one already stored (or to an earlier item of this request) is a
        # duplicate: kept once, and counted as such, not as stored again.
        outcomes: list[tuple[str, bool]] = []
        for r in rows:
            fresh = r["report_key"] in inserted
            inserted.discard(r["report_key"])
            outcomes.append((r["outcome"], fresh))
        return FeedbackCounts(stored=sum(1 for _, fresh in outcomes if fresh),
                              duplicates=sum(1 for _, fresh in outcomes if not fresh),
                              outcomes=tuple(outcomes))

    # ------------------------------------------------------------- report
    def summary(self, start: str | None, end: str | None, *, client: str | None = None,
                tenant: str | None = None) -> dict[str, Any]:
        rng = parse_range(start, end)
        if self.writer is not None:
            self.writer.flush(2.0)  # count this process's cards issued moments ago
        return self.report(rng, client=client, tenant=tenant)

    def report(self, rng: DateRange, *, client: str | None = None,
               tenant: str | None = None) -> dict[str, Any]:
        """Per finding: cards issued in the range, and the feedback reports on those cards.

        ``client`` / ``tenant``: only cards issued to that client ``iss`` / tenant (then
        flagged reports on unknown cards, which belong to no one, are left out).

        Feedback is counted against the issue time of its card (the cohort of
        cards issued in the range), so the acceptance rate compares like with
        like. Flagged reports on unknown cards are counted by receipt time under
        ``(unknown card)``.
        """
        out: dict[str, dict[str, Any]] = {}

        def entry(finding: str | None) -> dict[str, Any]:
            key = finding or "(no topic)"
            return out.setdefault(key, {"issued": 0, "accepted": 0, "overridden": 0,
                                        "acceptance_rate": None, "override_reasons": {}})

        def in_range(column: Any) -> list[Any]:
            conds = []
            if rng.start is not None:
                conds.append(column >= rng.start)
            if rng.end is not None:
                conds.append(column < rng.end)
            return conds

        ic, fb = issued_cards, feedback
        owned = [ic.c.client_iss == client] if client is not None else []
        if tenant is not None:
            owned.append(ic.c.tenant == tenant)
        with self._read() as conn:
            for row in conn.execute(select(ic.c.finding_code, func.count().label("n"))
                                    .where(*in_range(ic.c.issued_at), *owned)
                                    .group_by(ic.c.finding_code)):
                entry(row.finding_code)["issued"] = row.n
            joined = fb.join(ic, fb.c.issued_card == ic.c.card_uuid)
            for row in conn.execute(select(ic.c.finding_code, fb.c.outcome,
                                           fb.c.override_reason_system, fb.c.override_reason_code,
                                           fb.c.user_comment.is_not(None).label("has_comment"),
                                           func.count().label("n"))
                                    .select_from(joined).where(*in_range(ic.c.issued_at), *owned)
                                    .group_by(ic.c.finding_code, fb.c.outcome,
                                              fb.c.override_reason_system,
                                              fb.c.override_reason_code, "has_comment")):
                self._add(entry(row.finding_code), row)
            for row in conn.execute(select(fb.c.outcome, fb.c.override_reason_system,
                                           fb.c.override_reason_code,
                                           fb.c.user_comment.is_not(None).label("has_comment"),
                                           func.count().label("n"))
                                    .where(fb.c.issued_card.is_(None), *in_range(fb.c.received_at),
                                           *([false()] if owned else []))
                                    .group_by(fb.c.outcome, fb.c.override_reason_system,
                                              fb.c.override_reason_code, "has_comment")):
                self._add(entry(UNKNOWN_FINDING), row)
        for data in out.values():
            decided = data["accepted"] + data["overridden"]
            data["acceptance_rate"] = round(data["accepted"] / decided, 4) if decided else None
            data["override_reasons"] = dict(sorted(data["override_reasons"].items(),
                                                   key=lambda kv: (-kv[1], kv[0])))
        return dict(sorted(out.items()))

    @staticmethod
    def _add(data: dict[str, Any], row: Any) -> None:
        if row.outcome == "accepted":
            data["accepted"] += row.n
            return
        data["overridden"] += row.n
        if row.override_reason_code:
            label = (f"{row.override_reason_system}|{row.override_reason_code}"
                     if row.override_reason_system else row.override_reason_code)
        elif row.has_comment:
            label = COMMENT_ONLY
        else:
            label = NO_REASON
        reasons = data["override_reasons"]
        reasons[label] = reasons.get(label, 0) + row.n

    # ------------------------------------------------------------- retention
    def purge(self, days: int, *, now: datetime | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Delete issued-card records older than ``days`` days, with all their feedback.

        Flagged feedback on unknown cards is deleted by its receipt time. Returns
        the counts (and the cutoff) so the command can say what it did.
        """
        if days < 1:
            raise ConfigError("retention must be at least 1 day")
        cutoff = (now or utcnow()) - timedelta(days=days)
        ic, fb = issued_cards, feedback
        old_cards = select(ic.c.card_uuid).where(ic.c.issued_at < cutoff)
        with self._write() as conn:
            n_feedback = conn.execute(select(func.count()).select_from(fb)
                                      .where(fb.c.issued_card.in_(old_cards))).scalar_one()
            n_flagged = conn.execute(select(func.count()).select_from(fb)
                                     .where(fb.c.issued_card.is_(None),
                                            fb.c.received_at < cutoff)).scalar_one()
            n_cards = conn.execute(select(func.count()).select_from(ic)
                                   .where(ic.c.issued_at < cutoff)).scalar_one()
            if not dry_run:
                conn.execute(fb.delete().where(fb.c.issued_card.in_(old_cards)))
                conn.execute(fb.delete().where(fb.c.issued_card.is_(None),
                                               fb.c.received_at < cutoff))
                conn.execute(ic.delete().where(ic.c.issued_at < cutoff))
        return {"cutoff": cutoff.isoformat(), "issued_cards": n_cards,
                "feedback": n_feedback + n_flagged, "dry_run": dry_run}

    # ------------------------------------------------------------- for tests and tools
    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {"issued_cards": conn.execute(select(func.count()).select_from(issued_cards))
                    .scalar_one(),
                    "feedback": conn.execute(select(func.count()).select_from(feedback))
                    .scalar_one()}

    def feedback_rows(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(feedback).order_by(feedback.c.id))]

    def issued_rows(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(issued_cards).order_by(issued_cards.c.issued_at, issued_cards.c.card_uuid))]


#: Client text stored in a column of limited length: (column, where in the feedback item).
_LIMITED_TEXT = (("override_reason_system", "reason", "system"),
                 ("override_reason_code", "reason", "code"),
                 ("override_reason_display", "reason", "display"),
                 ("user_comment", None, "userComment"))


def _unstorable(where: str, coding: Mapping[str, Any], reason: Mapping[str, Any]) -> list[Issue]:
    """Values the database cannot hold, as 400 issues (else: PostgreSQL refuses a value
    longer than its column or holding NUL with a DataError, a 500; SQLite kept them)."""
    issues = []
    for column, part, name in _LIMITED_TEXT:
        value = (coding if part == "reason" else reason).get(name)
        if not isinstance(value, str):
            continue
        field_path = (f"{where}.overrideReason.reason.{name}" if part == "reason"
                      else f"{where}.overrideReason.{name}")
        limit = getattr(feedback.c[column].type, "length", None)
        if limit is not None and len(value) > limit:
            issues.append(Issue(f"{field_path}: longer than {limit} characters",
                                expression=field_path))
        elif "\x00" in value:
            issues.append(Issue(f"{field_path}: must not contain NUL (U+0000)",
                                expression=field_path))
    return issues


@dataclass(frozen=True)
class _Known:
    """An issued-card record as record_feedback reads it (from the database or the writer)."""

    card_uuid: str
    service_id: str
    suggestion_uuids: str


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _insert_ignore(conn: Connection, table: Table, key: str) -> Any:
    """INSERT ... ON CONFLICT (key) DO NOTHING, in the connection's dialect."""
    return upsert_insert(conn.dialect.name, table).on_conflict_do_nothing(index_elements=[key])


def open_store(config: Config, *, migrate_now: bool = True) -> SqlStore:
    """The store for ``config.database_url``, migrated to the newest schema.

    Called by ``create_app`` (before gunicorn forks, with ``--preload``): it
    migrates under a cross-process lock, then drops every connection so that
    each worker opens its own.
    """
    url = config.database_url
    try:
        build_engine(url).dispose()  # fail fast on an unsupported URL
        if migrate_now:
            revision = migrate(url)
    except ArgumentError as exc:
        raise ConfigError(explain_database_error(exc, url)) from None
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(explain_database_error(exc, url)) from None
    except OSError as exc:  # e.g. the SQLite file's directory cannot be created
        raise ConfigError(f"MSKCDS_DATABASE_URL ({describe_url(url)}): {exc.strerror or exc}"
                          f" ({exc.filename}); make MSKCDS_DATA_DIR a writable directory") from None
    if migrate_now:
        log.info("database ready", extra={"fields": {"database": make_url(url).get_backend_name(),
                                                     "revision": revision}})
    return SqlStore(url, unknown_card=config.feedback_unknown_card,
                    issued_queue_max=config.issued_queue_max)
