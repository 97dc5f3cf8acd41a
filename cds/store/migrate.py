"""Schema migrations (Alembic, scripts in ``cds/store/migrations``), one migrator at a time.

``migrate`` brings a database to a revision under a cross-process lock (a file lock beside a
SQLite file, an advisory lock on PostgreSQL), so several workers or instances starting
together never run the same migration twice.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, make_url

from cds.store.db import build_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key for migrations ("mskcds" in ASCII, fits a bigint).
PG_MIGRATION_LOCK = 0x6D736B636473


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _migration_lock(engine: Engine, url: str) -> Iterator[Connection]:
    """One migrator at a time, across processes: a file lock (SQLite) or an advisory lock (PG)."""
    if engine.dialect.name == "sqlite":
        lock_path = Path(f"{make_url(url).database}.migrate.lock")
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                with engine.connect() as conn:
                    yield conn
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    else:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                conn.commit()


def migrate(url: str, revision: str = "head") -> str | None:
    """Bring the database at ``url`` to ``revision``; return the revision it is at."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    engine = build_engine(url)
    try:
        with _migration_lock(engine, url) as conn:
            command.upgrade(alembic_config(conn), revision)
            conn.commit()
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = build_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
