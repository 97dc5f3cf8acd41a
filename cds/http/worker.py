"""The gunicorn worker ``mskcds serve`` uses: gthread that gives a thread only to a whole request.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte
arrives; the thread then blocks reading the rest of the request line, headers and
body. A client that sends one header line every few seconds (slowloris) or drips
its body holds that thread, and a handful of such clients stall every other caller.

Here the worker's main loop (which already polls the listening socket and the
kept-alive connections) reads each request without blocking: the request line
and headers, then the body (Content-Length, or chunked up to its last chunk).
Only a complete request goes to the thread pool, where gunicorn parses it from
the bytes already read (its own parser, limits and errors). A slow client costs
a buffer, never a thread. A request that has not arrived within
``MSKCDS_REQUEST_HEADER_TIMEOUT`` (headers) / ``MSKCDS_REQUEST_TIMEOUT`` (whole
request) gets a 408;
the bytes held for unfinished requests in one worker are bounded
(4 x ``MSKCDS_MAX_BODY_BYTES``, at least 64 MiB; past it: 503).

The same worker answers gunicorn's own errors (400 malformed request, 414 request
line too long, 431 headers too large, 501 transfer coding) as the service answers
everything: a JSON OperationOutcome with ``Cache-Control: no-store``,
``X-Content-Type-Options: nosniff`` and CORS, and no ``Server`` banner naming
gunicorn or a version.
"""
from __future__ import annotations

import json
import re
import selectors
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi as gwsgi
from gunicorn.workers.gthread import ThreadWorker

from cds.config import Config
from cds.errors import Issue, operation_outcome

#: Request line + headers larger than this are handed to gunicorn's parser as they are
#: (it answers 414 or 431); its default limits (8 KiB fields, 100 of them) are below.
MAX_HEADER_BYTES = 1024 * 1024
RECV_SIZE = 256 * 1024

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(;[^\r\n]*)?\r\n")

#: What a client is told for each of gunicorn's own error answers (never the request's bytes).
_ERROR_TEXT = {
    400: "The request is not valid HTTP/1.1 (request line, header or chunked body).",
    403: "Request refused.",
    408: "The request did not arrive in time.",
    414: "The request line is too long.",
    417: "Only the Expect value 100-continue is supported.",
    431: "The request header fields are too large.",
    500: "Internal error in the CDS service.",
    501: "This Transfer-Encoding is not supported.",
    503: "The service is busy; retry later.",
}
_REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
            413: "Content Too Large", 414: "URI Too Long",
            417: "Expectation Failed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


def error_bytes(status: int, cors_any: bool = True, text: str | None = None) -> bytes:
    """A complete HTTP/1.1 answer for a request the application never saw."""
    text = text or _ERROR_TEXT.get(status, _ERROR_TEXT[400] if status < 500 else _ERROR_TEXT[500])
    code = {408: "timeout", 503: "transient", 500: "exception", 501: "not-supported",
            417: "not-supported", 413: "too-long", 414: "too-long",
            431: "too-long"}.get(status, "invalid")
    body = json.dumps(operation_outcome([Issue(text, code=code,
                                               severity="fatal" if status == 500 else "error")]),
                      separators=(",", ":")).encode()
    headers = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
               "Connection: close",
               "Content-Type: application/json",
               f"Content-Length: {len(body)}",
               "Cache-Control: no-store",
               "X-Content-Type-Options: nosniff",
               f"Date: {util.http_date()}"]
    if cors_any:
        headers.append("Access-Control-Allow-Origin: *")
    if status == 503:
        headers.append("Retry-After: 1")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


class _Pending:
    """The bytes of one request still arriving, and what is known of its framing."""

    __slots__ = ("buf", "started", "header_end", "need", "chunk_pos", "chunked", "too_large",
                 "body_len")

    def __init__(self, initial: bytes, now: float):
        self.buf = bytearray(initial)
        self.started = now
        self.header_end: int | None = None  # offset just past the blank line
        self.need: int | None = None        # total bytes of a Content-Length request
        self.chunk_pos = 0                  # chunked: where the next chunk-size line starts
        self.chunked = False
        self.too_large = False              # a body over the limit: 413 from here
        self.body_len = 0                   # chunked: the chunk sizes so far


class BufferedThreadWorker(ThreadWorker):
    """gthread whose threads only ever see a complete request (see the module docstring)."""

    def init_process(self) -> None:
        cfg = Config.from_env()
        self.mskcds_max_body = cfg.max_body_bytes
        self.mskcds_header_timeout = cfg.request_header_timeout
        self.mskcds_request_timeout = cfg.request_timeout
        self.mskcds_cors_any = "*" in cfg.cors_origins
        self.mskcds_max_pending = max(64 * 1024 * 1024, 4 * cfg.max_body_bytes)
        self.mskcds_pending_bytes = 0
        self.mskcds_reading: deque[Any] = deque()
        self._quiet_server_banner()
        util.write_error = self._write_error  # gunicorn's own error answers, as JSON
        super().init_process()

    # ------------------------------------------------------------- banner and errors
    @staticmethod
    def _quiet_server_banner() -> None:
        """No ``Server: gunicorn/<version>`` header on any answer."""
        original = gwsgi.Response.default_headers
        if getattr(original, "mskcds", False):
            return

        def default_headers(self: Any) -> list[str]:
            return [h for h in original(self) if not h.startswith("Server:")]
        default_headers.mskcds = True  # type: ignore[attr-defined]
        gwsgi.Response.default_headers = default_headers

    def _write_error(self, sock: Any, status_int: int, reason: str, mesg: str) -> None:
        util.write_nonblock(sock, error_bytes(status_int, self.mskcds_cors_any))

    def _reject(self, conn: Any, status: int, text: str | None = None) -> None:
        try:
            conn.sock.setblocking(False)
            conn.sock.send(error_bytes(status, self.mskcds_cors_any, text))
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()

    # ------------------------------------------------------------- reading ahead
    def enqueue_req(self, conn: Any) -> None:
        if getattr(conn, "mskcds_ready", False) or self.cfg.is_ssl:
            conn.mskcds_ready = False
            super().enqueue_req(conn)
            return
        initial = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        state = _Pending(initial, time.monotonic())
        conn.mskcds_state = state
        if self._complete(conn, state):
            self._dispatch_or_refuse(conn, state)
            return
        self.mskcds_pending_bytes += len(initial)  # held until _forget
        conn.sock.setblocking(False)
        self.mskcds_reading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        state = conn.mskcds_state
        while True:
            try:
                data = conn.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # the client went away
                self._forget(conn)
                self.nr_conns -= 1
                conn.close()
                return
            state.buf += data
            self.mskcds_pending_bytes += len(data)
            if self.mskcds_pending_bytes > self.mskcds_max_pending:
                self._forget(conn)
                self._reject(conn, 503)
                return
            if self._complete(conn, state):
                self._forget(conn)
                self._dispatch_or_refuse(conn, state)
                return
            if len(data) < RECV_SIZE:
                return

    def _forget(self, conn: Any) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.mskcds_reading.remove(conn)
        except ValueError:
            pass
        state = getattr(conn, "mskcds_state", None)
        if state is not None:
            self.mskcds_pending_bytes -= len(state.buf)

    def _dispatch_or_refuse(self, conn: Any, state: _Pending) -> None:
        if state.too_large:
            # Answered here, connection closed: no thread reads (or drains) a body we refuse.
            conn.mskcds_state = None
            self._reject(conn, 413, f"Request body is larger than {self.mskcds_max_body} bytes.")
            return
        self._dispatch(conn)

    def _dispatch(self, conn: Any) -> None:
        state = conn.mskcds_state
        conn.mskcds_state = None
        conn.mskcds_buffered = bytes(state.buf) if state is not None else b""
        conn.data_ready = True
        conn.mskcds_ready = True
        self.enqueue_req(conn)

    def _complete(self, conn: Any, state: _Pending) -> bool:
        """Has the whole request arrived (or is it malformed enough for gunicorn to refuse)?"""
        buf = state.buf
        if state.header_end is None:
            # Leading empty lines before a request line are tolerated (RFC 9112 2.2).
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return len(buf) > MAX_HEADER_BYTES
            state.header_end = end + 4
            head = bytes(buf[:end]).split(b"\r\n")
            length: int | None = None
            expect_continue = False
            for line in head[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    return True  # malformed: gunicorn answers 400
                name = name.strip().lower()
                value = value.strip()
                if name == b"content-length":
                    if length is not None or not value.isdigit():
                        return True
                    length = int(value)
                elif name == b"transfer-encoding":
                    if value.lower().split(b",")[-1].strip() != b"chunked":
                        return True  # a coding gunicorn refuses (501) or a malformed one
                    state.chunked = True
                elif name == b"expect" and value.lower() == b"100-continue" \
                        and head[0].endswith(b"HTTP/1.1"):
                    expect_continue = True
            if length is not None and length > self.mskcds_max_body and not state.chunked:
                state.too_large = True  # refused before the client sends it (no 100 Continue)
                return True
            if expect_continue:
                self._continue(conn)
            if state.chunked:
                if length is not None:
                    return True  # both framings: gunicorn refuses it
                state.chunk_pos = state.header_end
            else:
                if length is None:
                    return True  # no body
                state.need = state.header_end + length
        if state.need is not None:
            return len(buf) >= state.need
        return self._chunks_done(state)

    def _chunks_done(self, state: _Pending) -> bool:
        buf = state.buf
        while True:
            m = _CHUNK_SIZE.match(buf, state.chunk_pos)
            if m is None:
                # Not a chunk-size line (yet): malformed if the line is already complete.
                return buf.find(b"\r\n", state.chunk_pos) >= 0 or \
                    len(buf) - state.chunk_pos > 1024
            size = int(m.group(1), 16)
            if size == 0:
                # The last chunk, then trailer fields, then an empty line.
                rest = m.end()
                return buf.startswith(b"\r\n", rest) or buf.find(b"\r\n\r\n", rest) >= 0
            if state.body_len + size > self.mskcds_max_body:
                state.too_large = True  # refused on the chunk size, before its data
                return True
            after = m.end() + size + 2
            if len(buf) < after:
                return False
            state.body_len += size
            state.chunk_pos = after

    def _continue(self, conn: Any) -> None:
        try:
            conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            conn.mskcds_continued = True
        except OSError:
            pass

    # ------------------------------------------------------------- in the thread
    def handle(self, conn: Any) -> Any:
        data = getattr(conn, "mskcds_buffered", None)
        if data is not None:
            conn.mskcds_buffered = None
            conn.sock.setblocking(True)
            conn.init()
            if data:
                conn.parser.unreader.unread(data)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> Any:
        if getattr(conn, "mskcds_continued", False):
            req._expected_100_continue = False  # the main loop already said 100 Continue
            conn.mskcds_continued = False
        return super().handle_request(req, conn)

    def run(self) -> None:
        try:
            super().run()
        finally:
            # Issued-card records still queued in this worker go to the database first.
            from cds.store.writer import flush_all

            flush_all(timeout=max(1.0, self.cfg.graceful_timeout / 2))

    # ------------------------------------------------------------- deadlines
    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in list(self.mskcds_reading):
            state = conn.mskcds_state
            age = now - state.started
            late = (age > self.mskcds_request_timeout or
                    (state.header_end is None and age > self.mskcds_header_timeout))
            if late or (not self.alive and not state.buf):
                self._forget(conn)
                if state.buf:
                    self._reject(conn, 408)
                else:
                    self.nr_conns -= 1
                    conn.close()
