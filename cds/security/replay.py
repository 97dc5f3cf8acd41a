"""Replay protection for client JWTs: remember each ``jti`` until its token expires.

CDS Hooks 2.0 makes ``jti`` a nonce "used to protect against replay attacks":
a token whose (``iss``, ``jti``) pair was already accepted, and has not yet
expired, is refused.

Two implementations behind one small interface (``claim``):

* ``SqlReplayCache`` (the default): one table in a SQL database through
  SQLAlchemy. With the default SQLite file every gunicorn worker on the machine
  sees the same table, so a token replayed to another worker is still refused.
  Point ``MSKCDS_REPLAY_CACHE_URL`` at a PostgreSQL database and several machines
  share it too.
* ``MemoryReplayCache`` (``MSKCDS_REPLAY_CACHE_URL=memory``): a dict in the
  process. Each gunicorn worker has its own, so a replay that lands on another
  worker is NOT detected. Only for a single worker process (or tests).

Keys are SHA-256 digests of ``iss`` and ``jti``: the cache never stores a raw
token identifier. A cache that cannot be reached fails closed: the caller turns
``ReplayCacheError`` into a 503 with ``Retry-After`` (the token is not accepted, and
the EHR is not told its credentials are bad).
"""
from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from typing import Any, Callable, Protocol

from sqlalchemy.engine import Engine

from cds.store.db import ProcessLocalEngine, build_engine, upsert_insert

PURGE_EVERY_SECONDS = 60.0

# The SQLite claim as SQL (SqlReplayCache._claim_sqlite): insert, or take over an EXPIRED row
# with the same key; a row back means claimed, none means a live entry (a replay).
_SQLITE_CLAIM = ("INSERT INTO mskcds_jti (key, expires_at) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                 "WHERE mskcds_jti.expires_at < ? RETURNING key")
_SQLITE_PURGE = "DELETE FROM mskcds_jti WHERE expires_at < ?"


class ReplayCacheError(RuntimeError):
    """The cache could not answer; the token must not be accepted."""


def replay_key(iss: str, jti: str) -> str:
    return hashlib.sha256(f"{iss}\n{jti}".encode("utf-8")).hexdigest()


class ReplayCache(Protocol):
    def claim(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at`` (epoch seconds).

        True when the key was not held (the token is fresh), False when it is a replay.
        """


class MemoryReplayCache:
    """Per-process cache (see the module docstring for why that is a limitation)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._last_purge = clock()

    def claim(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        with self._lock:
            if now - self._last_purge > PURGE_EVERY_SECONDS:
                self._seen = {k: exp for k, exp in self._seen.items() if exp >= now}
                self._last_purge = now
            held = self._seen.get(key)
            if held is not None and held >= now:
                return False
            self._seen[key] = expires_at
            return True

    def ping(self) -> None:
        """Always usable (readiness)."""

    def __len__(self) -> int:
        return len(self._seen)


class SqlReplayCache:
    """A ``mskcds_jti`` table, shared by every process that uses the same database URL."""

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        from sqlalchemy import Column, Float, MetaData, String, Table
        from sqlalchemy.engine import make_url

        self.url = make_url(url)
        self._clock = clock
        self._metadata = MetaData()
        self._table = Table("mskcds_jti", self._metadata,
                            Column("key", String(64), primary_key=True),
                            Column("expires_at", Float, nullable=False, index=True))
        self._engines = ProcessLocalEngine(self._build_engine)
        self._last_purge = 0.0
        # SQLite: one claim at a time per process. The threads of a worker then queue on a
        # lock that hands over at once, instead of on SQLite's write lock, whose busy handler
        # sleeps 1, 2, 5, 10... ms between tries (replay claim p99 was 19 ms under threads).
        # Exactly-once is still the database's primary key, across workers and instances.
        self._sqlite = self.url.drivername in ("sqlite", "sqlite+pysqlite")
        self._serial = (threading.Lock() if self.url.drivername.startswith("sqlite")
                        else contextlib.nullcontext())
        try:
            self._metadata.create_all(self._engines.get())
        except Exception as exc:  # the database URL is unusable: stop at start-up
            raise ReplayCacheError(f"replay cache {self.url.render_as_string(hide_password=True)} "
                                   f"cannot be opened: {exc.__class__.__name__}: {exc}") from None
        finally:
            # gunicorn --preload builds the app before forking: never carry connections
            # across a fork, each worker opens its own.
            self._engines.dispose()

    def _build_engine(self) -> Engine:
        # The service's one engine factory; NORMAL: no fsync per commit in WAL (a replay
        # record lost to a power cut lets one token be replayed within its short lifetime).
        # PostgreSQL: the small pool the cache always had (a larger one with a shorter wait
        # held requests past 5 s while the server was down: test_store_faults_http).
        return build_engine(self.url.render_as_string(hide_password=False),
                            setting="MSKCDS_REPLAY_CACHE_URL", synchronous="NORMAL",
                            pg_pool=(2, 4, 30.0))

    def _upsert(self, key: str, expires_at: float, now: float) -> Any:
        """INSERT, or take over an EXPIRED row with the same key; a live row is left alone."""
        dialect = self.url.get_backend_name()
        if dialect not in ("sqlite", "postgresql"):
            return None
        table = self._table
        stmt = upsert_insert(dialect, table).values(key=key, expires_at=float(expires_at))
        return stmt.on_conflict_do_update(index_elements=[table.c.key],
                                          set_={"expires_at": stmt.excluded.expires_at},
                                          where=table.c.expires_at < now).returning(table.c.key)

    def claim(self, key: str, expires_at: float) -> bool:
        from sqlalchemy.exc import SQLAlchemyError

        now = self._clock()
        try:
            with self._serial:
                if self._sqlite:
                    return self._claim_sqlite(key, expires_at, now)
                return self._claim(key, expires_at, now)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise ReplayCacheError(f"replay cache unavailable: {exc.__class__.__name__}") from None

    def _claim_sqlite(self, key: str, expires_at: float, now: float) -> bool:
        """The same transaction as ``_claim``, on the pooled sqlite3 connection itself.

        One claim is on the path of every authenticated call: through SQLAlchemy Core it cost
        ~600 µs of CPU (checkout, the BEGIN and PRAGMA events, compiling, result objects);
        here it is two statements and a commit on the connection the engine opened (WAL,
        busy_timeout and synchronous=NORMAL set on connect). Exactly-once is unchanged: the
        primary key decides, under SQLite's write lock (BEGIN IMMEDIATE), across processes."""
        raw = self._engines.get().raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if now - self._last_purge > PURGE_EVERY_SECONDS:
                    self._last_purge = now
                    cur.execute(_SQLITE_PURGE, (now,))
                cur.execute(_SQLITE_CLAIM, (key, float(expires_at), now))
                claimed = cur.fetchone() is not None
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            finally:
                cur.close()
        except sqlite3.Error:
            raw.invalidate()   # e.g. a file replaced or unreadable: never reuse it
            raise
        finally:
            raw.close()            # back to the pool (a no-op after invalidate)
        return claimed

    def _claim(self, key: str, expires_at: float, now: float) -> bool:
        from sqlalchemy import delete, insert
        from sqlalchemy.exc import IntegrityError

        table = self._table
        engine = self._engines.get()
        upsert = self._upsert(key, expires_at, now)
        with engine.begin() as conn:  # one short transaction per token
            if now - self._last_purge > PURGE_EVERY_SECONDS:
                self._last_purge = now
                conn.execute(delete(table).where(table.c.expires_at < now))
            if upsert is not None:
                # A row back: inserted (or an expired one taken over); none: a live entry.
                return conn.execute(upsert).first() is not None
            conn.execute(delete(table).where(table.c.key == key, table.c.expires_at < now))
        try:
            with engine.begin() as conn:
                conn.execute(insert(table).values(key=key, expires_at=float(expires_at)))
        except IntegrityError:
            return False
        return True

    def ping(self) -> None:
        """Raise unless the cache's database answers and holds its table (readiness)."""
        from sqlalchemy import select

        with self._engines.get().connect() as conn:
            conn.execute(select(self._table.c.key).limit(0)).all()

    def count(self) -> int:
        from sqlalchemy import func, select

        with self._engines.get().connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock
            return int(conn.execute(select(func.count()).select_from(self._table)).scalar_one())


def open_replay_cache(url: str) -> MemoryReplayCache | SqlReplayCache:
    """``memory`` or a SQLAlchemy database URL (``sqlite:///path``, ``postgresql+psycopg://...``)."""
    if url.strip().lower() == "memory":
        return MemoryReplayCache()
    return SqlReplayCache(url)
