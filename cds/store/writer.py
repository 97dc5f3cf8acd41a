"""Issued-card records written off the request path: a bounded per-process queue and one thread.

Every service call records the cards it answered with (``issued_cards``), so that
feedback on them can be checked later. Written in the request, that insert was the
largest and least predictable part of a call under load (SQLite's busy handler
sleeps 1, 2, 5, 10... ms while another worker holds the write lock), and with the
database down the records were lost for good: feedback on those cards was then
refused as "unknown card" forever.

Here the request hands the rows to ``IssuedCardWriter.submit`` and answers at once;
one thread per process writes them in batches (one transaction per batch). While
the database is unreachable the rows stay queued and the thread retries with a
short backoff; they are written when it is back. The queue is bounded
(``MSKCDS_ISSUED_QUEUE_MAX`` records): past that, records are counted and logged as
dropped, never held without limit. Queued rows are visible to feedback at once
(``pending``): feedback on a card whose record is still queued writes that record
in its own transaction first, so it is never refused for arriving early. The queue
is flushed when the worker stops (gunicorn's worker exit, or the interpreter's).

Rows carry no patient data (see ``storage._issued_row``); nothing of them is logged.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import multiprocessing
import os
import threading
import time
import weakref
import zlib
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger("mskcds.storage")

#: Rows per transaction.
BATCH = 500
#: Seconds the thread gathers rows before it writes them: under load several calls share one
#: transaction, and each call wakes the thread at most once per window, not once per call.
GATHER = 0.02
#: Tries of a batch the database refuses for another reason than being unavailable, before
#: its records are dropped (counted and logged): a transient fault that surfaces as another
#: error must not lose records, and a row that can never be written must not block the queue
#: (5 tries with the backoff below span about 0.75 s).
REFUSED_TRIES = 5
#: Backoff while the database is unavailable (seconds, doubling up to the maximum).
RETRY_FIRST = 0.05
RETRY_MAX = 0.5
#: Seconds an idle writer thread waits before it ends (the next submit starts another).
IDLE_EXIT = 30.0
#: At most one "queue full" log line per this many seconds (with the count since the last).
DROP_LOG_EVERY = 10.0

_writers: "weakref.WeakSet[IssuedCardWriter]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Every writer starts an empty queue in a new process, before any request thread runs
    (gunicorn forks its workers from the process that built the store). Done lazily, by
    the first request threads, two of them could each replace the queue and lose a record
    queued between the two."""
    for writer in list(_writers):
        writer._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def flush_all(timeout: float = 5.0) -> None:
    """Write what every writer of this process still holds (at worker exit)."""
    for writer in list(_writers):
        writer.close(timeout)


class SharedClock:
    """A moment (``time.monotonic()``, one clock for all processes on the host) shared by the
    processes forked after this object was made: gunicorn ``--preload`` builds the store once,
    so what one worker marks, every worker reads. Falls back to a process-local value where
    shared memory cannot be had."""

    def __init__(self) -> None:
        self._local = 0.0
        try:
            self._shared: Any = multiprocessing.RawValue(ctypes.c_double, 0.0)
        except OSError:  # pragma: no cover - no /dev/shm
            self._shared = None

    def mark(self) -> None:
        now = time.monotonic()
        if self._shared is not None:
            self._shared.value = now
        self._local = now

    def within(self, seconds: float) -> bool:
        last = self._shared.value if self._shared is not None else self._local
        return last > 0.0 and time.monotonic() - last < seconds


class SharedQueued:
    """Which card records some worker still holds in its queue, as a counting filter in shared
    memory: one counter per slot, a card's slot from its uuid. Made before gunicorn forks
    (``--preload``), so every worker sees every worker's queue: feedback on a card another
    worker has not written yet waits for it (or is told to retry) instead of being refused as
    unknown, and a card no worker holds is known to be unknown at once. A slot shared with
    another queued card only makes feedback wait (a false "maybe queued", never a false
    "not queued"); the chance is the number queued / ``SLOTS``."""

    SLOTS = 1 << 16

    def __init__(self) -> None:
        try:
            self._counts: Any = multiprocessing.RawArray(ctypes.c_uint32, self.SLOTS)
            self._lock: Any = multiprocessing.Lock()
        except OSError:  # pragma: no cover - no /dev/shm: this process's queue only
            self._counts = [0] * self.SLOTS
            self._lock = threading.Lock()

    @classmethod
    def slot(cls, card_uuid: str) -> int:
        return zlib.crc32(card_uuid.encode()) & (cls.SLOTS - 1)

    def add(self, card_uuids: Iterable[str], step: int) -> None:
        slots = [self.slot(u) for u in card_uuids]
        if not slots:
            return
        with self._lock:
            for i in slots:
                self._counts[i] = max(0, self._counts[i] + step)

    def maybe_queued(self, card_uuid: str) -> bool:
        return self._counts[self.slot(card_uuid)] > 0


class Unavailable(Exception):
    """Raised by the write function when the database cannot be reached (retry later)."""


class IssuedCardWriter:
    def __init__(self, write: Callable[[list[dict[str, Any]]], None], *, capacity: int,
                 transient: tuple[type[BaseException], ...] = (Unavailable,)):
        self._write = write
        self.capacity = capacity
        self._transient = transient
        #: every worker's queued cards (made once, before any fork; never reset)
        self.queued = SharedQueued()
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        # _pid is set last: a thread that sees this process's pid sees the new queue too
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, dict[str, Any]] = {}   # card_uuid -> row, in issue order
        self._inflight: dict[str, dict[str, Any]] = {}  # taken by the thread, not yet committed
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flushing = 0
        self._atexit = False
        self.written = 0
        self.dropped = 0
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        self.outage_since: float | None = None   # monotonic time of the first failed write
        self._pid = os.getpid()

    # ------------------------------------------------------------- request side
    def submit(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Queue ``rows``; returns how many were taken (the rest are dropped and counted).
        A queue inherited across fork was replaced at the fork (``_after_fork_in_child``)."""
        taken = 0
        with self._cond:
            was_empty = not self._pending
            for row in rows:
                if len(self._pending) + len(self._inflight) >= self.capacity:
                    self.dropped += 1
                    self._dropped_unlogged += 1
                    continue
                if row["card_uuid"] not in self._pending:
                    self.queued.add((row["card_uuid"],), +1)
                self._pending[row["card_uuid"]] = dict(row)
                taken += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mskcds-issued-writer",
                                                daemon=True)
                self._thread.start()
                if not self._atexit:
                    atexit.register(self.close, 2.0)
                    self._atexit = True
            if was_empty or len(self._pending) >= BATCH:
                self._cond.notify()
        if self._dropped_unlogged:
            self._log_drops()
        return taken

    def pending(self, card_uuids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The queued (not yet committed) rows among ``card_uuids``."""
        if os.getpid() != self._pid:
            return {}
        with self._cond:
            out = {}
            for uid in card_uuids:
                row = self._pending.get(uid) or self._inflight.get(uid)
                if row is not None:
                    out[uid] = dict(row)
            return out

    def size(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._inflight)

    # ------------------------------------------------------------- the thread
    def _run(self) -> None:
        delay = RETRY_FIRST
        refused = 0
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    if not self._cond.wait(IDLE_EXIT) and not self._pending:
                        self._thread = None  # idle: the next submit starts a new thread
                        return
                if not self._pending and self._stopping:
                    return
                if not self._stopping and not self._flushing and len(self._pending) < BATCH:
                    self._cond.wait(GATHER)  # let more calls' rows join this transaction
                keys = list(self._pending)[:BATCH]
                batch = {k: self._pending.pop(k) for k in keys}
                self._inflight.update(batch)
            try:
                self._write(list(batch.values()))
            except self._transient as exc:
                now = time.monotonic()
                if self.outage_since is None:
                    self.outage_since = now
                    log.error("issued-card records queued: database unavailable, retrying",
                              extra={"fields": {"queued": self.size(),
                                                "error": exc.__class__.__name__}})
                with self._cond:
                    # Back in front of the queue, in their order; retry after a pause.
                    self._pending = {**batch, **self._pending}
                    for k in batch:
                        self._inflight.pop(k, None)
                    if self._stopping and self._stop_deadline < time.monotonic():
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as exc:  # refused: tried again a few times, never forever
                refused += 1
                with self._cond:
                    for k in batch:
                        self._inflight.pop(k, None)
                    if refused < REFUSED_TRIES and not self._stopping:
                        self._pending = {**batch, **self._pending}
                        self._cond.wait(delay)
                        delay = min(delay * 2, RETRY_MAX)
                        continue
                    self.dropped += len(batch)
                    self.queued.add(batch, -1)
                    log.error("issued-card records not written", extra={"fields": {
                        "cards": len(batch), "error": exc.__class__.__name__}})
                    self._cond.notify_all()
                refused = 0
                continue
            delay = RETRY_FIRST
            refused = 0
            if self.outage_since is not None:
                log.info("issued-card records written after the database came back",
                         extra={"fields": {"outage_s": round(time.monotonic() - self.outage_since, 1),
                                           "queued": self.size()}})
                self.outage_since = None
            with self._cond:
                for k in batch:
                    self._inflight.pop(k, None)
                self.written += len(batch)
                self.queued.add(batch, -1)   # committed first: a reader then finds it on file
                self._cond.notify_all()

    # ------------------------------------------------------------- shutdown
    _stop_deadline = float("inf")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed (or ``timeout``)."""
        if os.getpid() != self._pid:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            try:
                while self._pending or self._inflight:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.notify_all()
                    self._cond.wait(min(left, 0.05))
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 5.0) -> None:
        """Flush (for at most ``timeout``), then stop the thread; what is left is logged."""
        if os.getpid() != self._pid or self._thread is None:
            return
        done = self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._stop_deadline = time.monotonic()
            self._cond.notify_all()
            left = len(self._pending) + len(self._inflight)
            thread = self._thread
        if not done and left:
            with self._cond:   # never to be written by this process: no longer queued
                self.queued.add([*self._pending, *self._inflight], -1)
            try:
                log.error("issued-card records not written at exit",
                          extra={"fields": {"cards": left}})
            except Exception:  # pragma: no cover - logging already shut down at interpreter exit
                pass
        if thread is not None:
            thread.join(1.0)
        with self._cond:
            if thread is None or not thread.is_alive():  # a later submit starts a new one
                self._thread = None
                self._stopping = False
                self._stop_deadline = float("inf")

    def _log_drops(self) -> None:
        now = time.monotonic()
        with self._cond:
            if not self._dropped_unlogged or now - self._last_drop_log < DROP_LOG_EVERY:
                return
            count, self._dropped_unlogged = self._dropped_unlogged, 0
            self._last_drop_log = now
        log.error("issued-card queue full: records dropped", extra={"fields": {
            "dropped": count, "dropped_total": self.dropped, "capacity": self.capacity}})
