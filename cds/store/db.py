"""One SQLAlchemy engine per process.

gunicorn ``--preload`` builds the app before it forks its workers. A connection
pool must never be shared across a fork (two processes would write to one
socket or file handle), so each process builds its own engine on first use, and
an engine inherited from the parent is dropped without closing the parent's
connections.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine


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
    from sqlalchemy import event

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
