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
from typing import Callable

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
