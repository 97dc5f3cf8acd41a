"""Hostile peers for fault tests, on 127.0.0.1: an HTTP endpoint that drip-feeds its answer.

``DripServer`` accepts connections and answers each one byte at a time, ``interval``
seconds apart (status line, headers and body alike), for at most ``max_seconds``: what a
slow or malicious JWKS / FHIR endpoint does to tie up whoever reads from it. It counts
the connections it was asked on (``hits``) and how many are still open (``open``).
"""
from __future__ import annotations

import socket
import threading
import time


class DripServer:
    def __init__(self, body: bytes = b'{"keys": []}', interval: float = 0.5,
                 max_seconds: float = 60.0) -> None:
        self.body = body
        self.interval = interval
        self.max_seconds = max_seconds
        self.hits = 0
        self.open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> "DripServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def __enter__(self) -> "DripServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.hits += 1
                self.open += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(self.body)).encode() + b"\r\n\r\n" + self.body)
        ends = time.monotonic() + self.max_seconds
        try:
            conn.settimeout(1.0)
            try:
                conn.recv(65536)  # the request (whatever it is)
            except socket.timeout:
                pass
            for i in range(len(answer)):
                if self._stop.wait(self.interval) or time.monotonic() > ends:
                    break
                conn.sendall(answer[i:i + 1])
        except OSError:
            pass  # the reader gave up: exactly what should happen
        finally:
            conn.close()
            with self._lock:
                self.open -= 1
