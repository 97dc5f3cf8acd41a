"""The database engines: one factory (``build_engine``), one engine per process.

The feedback store and the replay cache open their databases the same way
(``build_engine``), so a SQLite file or a PostgreSQL URL behaves alike for both.

gunicorn ``--preload`` builds the app before it forks its workers. A connection
pool must never be shared across a fork (two processes would write to one
socket or file handle), so each process builds its own engine on first use, and
an engine inherited from the parent is dropped without closing the parent's
connections.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

from cds.config import ConfigError


class ProcessLocalEngine:
    """Holds the engine that ``factory`` builds, one per process id."""

    def __init__(self, factory: Callable[[], Engine]):
        self._factory = factory
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def get(self) -> Engine:
        pid = os.getpid()
        if self._engine is None or self._pid != pid:
            with self._lock:
                if self._engine is None or self._pid != pid:
                    if self._engine is not None:
                        # Inherited across fork: drop the pool without touching the
                        # parent's connections.
                        self._engine.dispose(close=False)
                    self._engine = self._factory()
                    self._pid = pid
        return self._engine

    def dispose(self) -> None:
        """Close this process's connections (e.g. before gunicorn forks)."""
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None
            self._pid = None


#: PostgreSQL: seconds a new connection may take before it fails (a server that is down or
#: restarting then answers 503 at once instead of holding the request).
PG_CONNECT_TIMEOUT_SECONDS = 3

#: sqlite3 errors after which a connection must not go back to the pool. SQLite opens a
#: file read-only when it cannot write it (and such a connection stays read-only after the
#: condition clears); a file handle can break (I/O error) or stay locked.
SQLITE_DISCARD = ("readonly database", "disk i/o error", "unable to open database",
                  "database is locked", "database or disk is full", "not a database")


def discard_broken_connections(engine: Engine) -> Engine:
    """Make ``engine`` drop a SQLite connection that failed as read-only, broken or locked.

    The error is marked as a disconnect: SQLAlchemy then discards that connection and
    every older one in the pool, so the next request opens a fresh one and the store
    heals by itself once the fault has cleared (no worker restart). PostgreSQL needs
    nothing here: psycopg's disconnect detection and ``pool_pre_ping`` already do it.
    """
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "handle_error")
    def _discard(context: Any) -> None:
        text = str(context.original_exception).lower()
        if any(marker in text for marker in SQLITE_DISCARD):
            context.is_disconnect = True

    return engine


def upsert_insert(dialect: str, table: Table) -> Any:
    """``INSERT`` for ``table`` that accepts ``ON CONFLICT`` clauses, in ``dialect``
    (``sqlite`` or ``postgresql``; both speak ON CONFLICT, with the same SQLAlchemy API)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"no ON CONFLICT insert for the {dialect!r} dialect")


#: How long a SQLite connection waits for another's write lock before it gives up.
SQLITE_BUSY_TIMEOUT_MS = 15_000


def build_engine(url: str, *, setting: str = "MSKCDS_DATABASE_URL", synchronous: str = "FULL",
                 pg_pool: tuple[int, int, float] = (4, 4, 10.0)) -> Engine:
    """A new engine for this process: the one engine factory of the service (the feedback
    store and the replay cache both use it).

    SQLite: WAL, a busy timeout, foreign keys on, and every transaction opened by us with
    ``BEGIN IMMEDIATE`` (execution option ``sqlite_begin`` to change it) at ``PRAGMA
    synchronous=<synchronous>`` (execution option ``sqlite_synchronous`` per transaction);
    connections that failed read-only, broken or locked are discarded. PostgreSQL: psycopg 3,
    pre-ping, a connect timeout and ``pg_pool`` = (pool size, overflow, seconds to wait for a
    pooled connection). ``setting`` names the variable the URL came from, for the messages.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            raise ConfigError(f"{setting}: an in-memory SQLite database cannot be shared "
                              "by workers; give a file path (sqlite:////path/mskcds.sqlite3)")
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {Path(database).parent} for the SQLite database: "
                              f"{exc.strerror or exc}; set MSKCDS_DATA_DIR (or "
                              f"{setting}) to a writable place") from None
        # A small pool per process (the store rebuilds the engine after a fork).
        engine = create_engine(url, poolclass=QueuePool, pool_size=4, max_overflow=8,
                               pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                               connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                             "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:
            # Take transaction control from the sqlite3 module: we say BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute(f"PRAGMA synchronous={synchronous}")  # default; see _sqlite_begin
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # IMMEDIATE: take the write lock at BEGIN (waiting up to busy_timeout), so a
            # read-then-write transaction never fails on a lock upgrade under concurrency.
            options = conn.get_execution_options()
            level = options.get("sqlite_synchronous", synchronous)
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            conn.exec_driver_sql(f"BEGIN {options.get('sqlite_begin', 'IMMEDIATE')}")

        return discard_broken_connections(engine)
    if parsed.get_backend_name() == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            # The one PostgreSQL driver we install is psycopg 3 (postgresql:// would mean psycopg2).
            parsed = parsed.set(drivername="postgresql+psycopg")
        size, overflow, wait = pg_pool
        return create_engine(parsed, pool_pre_ping=True, pool_size=size, max_overflow=overflow,
                             connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_SECONDS},
                             pool_timeout=wait)
    raise ConfigError(f"{setting}: unsupported database {parsed.get_backend_name()!r} "
                      "(use sqlite:///... or postgresql+psycopg://...)")


def describe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "MSKCDS_DATABASE_URL"  # unparsable: never echo it (it may hold a password)
