"""Hold off the cyclic garbage collector while a call builds its objects.

A service call allocates a graph that lives exactly as long as the call: the parsed
request (about 50 containers per Observation), the facts, the cards. Every object of it
survives the young collections it meets, so the collector walks it again and again (gen 0,
gen 1, and each full collection while it grows): 186 collections and 32-75 ms of a
10,000-Observation call went there, for nothing, since the graph is freed by reference
counting when the call ends (the parsed JSON holds no cycles).

``paused()`` turns automatic collection off for the length of a call and back on when the
last paused call in the process ends. Calls overlap on a worker's threads, so under steady
load the count may never reach zero: then a full collection is run by the first call to end
after ``MAX_PAUSE`` seconds of pause, so cyclic garbage never outlives a few seconds. A
collector switched off by someone else (``gc.disable()`` in an embedding program) is left
as it was. A process forked while a call held the pause starts with none held.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

#: The longest the collector stays off while calls keep overlapping (seconds).
MAX_PAUSE = 2.0

_lock = threading.Lock()
_holders = 0
_ours = False           # automatic collection was switched off here (and is turned on here)
_since = 0.0            # when it was switched off, or last collected during the pause


@contextmanager
def paused() -> Iterator[None]:
    global _holders, _ours, _since
    with _lock:
        if _holders == 0 and gc.isenabled():
            gc.disable()
            _ours, _since = True, time.monotonic()
        _holders += 1
    try:
        yield
    finally:
        collect = False
        with _lock:
            _holders -= 1
            if _ours:
                if _holders == 0:
                    gc.enable()
                    _ours = False
                elif time.monotonic() - _since >= MAX_PAUSE:
                    _since, collect = time.monotonic(), True
        if collect:
            gc.collect()


def _after_fork_in_child() -> None:
    """The calls that held the pause are not in the child: none holds it there."""
    global _lock, _holders, _ours
    _lock = threading.Lock()
    if _ours:
        gc.enable()
    _holders, _ours = 0, False


os.register_at_fork(after_in_child=_after_fork_in_child)


def state() -> tuple[int, bool]:
    """(calls holding the pause, whether the pause switched the collector off): for tests."""
    with _lock:
        return _holders, _ours
