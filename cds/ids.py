"""Random identifiers: UUID version 4 (RFC 9562), from the operating system's CSPRNG.

``uuid.uuid4()`` reads 16 bytes from ``os.urandom`` per identifier; a call issues about five
(the request id, each card, each suggestion), and on this service's virtual machines one
``getrandom`` system call cost 16-29 µs once the request's own work had run between two of
them (0.7 µs back to back). Here the bytes are read 4 KiB at a time and handed out 16 at a
time, under a lock, with the version and variant bits set as ``uuid.uuid4`` sets them. The
buffer is dropped in a forked child, so two workers never hand out the same bytes.
"""
from __future__ import annotations

import os
import threading
import uuid

BUFFER_BYTES = 4096

_lock = threading.Lock()
_buffer = b""
_used = 0


def uuid4() -> uuid.UUID:
    global _buffer, _used
    with _lock:
        if _used + 16 > len(_buffer):
            _buffer, _used = os.urandom(BUFFER_BYTES), 0
        raw = _buffer[_used:_used + 16]
        _used += 16
    return uuid.UUID(bytes=raw, version=4)


def new_id() -> str:
    """A fresh UUID version 4 in its canonical text form."""
    return str(uuid4())


def _after_fork_in_child() -> None:
    global _lock, _buffer, _used
    _lock = threading.Lock()
    _buffer, _used = b"", 0


os.register_at_fork(after_in_child=_after_fork_in_child)
