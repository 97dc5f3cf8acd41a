"""The serving layer `mskcds serve` runs (cds/http/worker.py), through real server processes.

* Slow clients (slowloris: one header line every 2 s; a body dripped byte by byte) hold
  a buffer, not a thread: 50 of them leave /healthz and a service call answering within 1 s.
  (With gunicorn's plain gthread worker, 8 such connections made /healthz time out.)
* A request that does not arrive in time gets a JSON 408 and its connection is closed.
* gunicorn's own answers (malformed request 400, request line 414, headers 431, transfer
  coding 501) are JSON OperationOutcomes with Cache-Control: no-store, nosniff and CORS,
  like every other answer, and no answer names gunicorn or a version in ``Server``.
* Request framing still works as HTTP/1.1 requires: Expect: 100-continue, chunked bodies,
  pipelined requests on one kept-alive connection.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import EXAMPLES, REPO, ServerProcess, free_port

SERVICE = "/cds-services/bone-muscle-health"


def example_body() -> bytes:
    body = json.loads((EXAMPLES / "low-bone-mass.request.json").read_text(encoding="utf-8"))
    body["hookInstance"] = str(uuid.uuid4())
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`mskcds serve` itself, with its defaults (workers, threads, worker class)."""
    tmp = tmp_path_factory.mktemp("serving")
    port = free_port()
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_LOG_LEVEL": "WARNING",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp / 'mskcds.sqlite3'}",
           "MSKCDS_REQUEST_HEADER_TIMEOUT": "3"}
    import os

    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mskcds"), "serve", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=REPO,
                            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / "serve.log").read_text())
        time.sleep(0.1)
    try:
        yield base, port
    finally:
        import os as _os
        import signal

        _os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            _os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
    return out


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_json_error(answer: bytes, status: int) -> dict[str, Any]:
    got, headers, body = split(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["access-control-allow-origin"] == "*"
    assert "server" not in headers, headers
    doc = json.loads(body)
    assert doc["resourceType"] == "OperationOutcome" and doc["issue"][0]["diagnostics"]
    return doc


# --------------------------------------------------------------------------- slow clients
def test_fifty_slow_clients_leave_healthz_and_a_service_call_answering_within_1s(served):
    base, port = served
    slow: list[socket.socket] = []
    stop = threading.Event()
    try:
        for i in range(40):  # slowloris: a header line every 2 s, never the blank line
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\n".encode())
            slow.append(s)
        body = example_body()
        for i in range(10):  # slow body: headers complete, then a byte every 2 s
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:10])
            slow.append(s)

        def drip() -> None:
            n = 0
            while not stop.wait(2.0):
                n += 1
                for s in slow[:40]:
                    try:
                        s.sendall(f"X-Slow-{n}: 1\r\n".encode())
                    except OSError:
                        pass
                for s in slow[40:]:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        time.sleep(2.5)  # the slow clients are all in
        worst_health = worst_call = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            r = requests.get(base + "/healthz", timeout=5)
            t1 = time.perf_counter()
            c = requests.post(base + SERVICE, data=example_body(),
                              headers={"Content-Type": "application/json"}, timeout=5)
            t2 = time.perf_counter()
            assert r.status_code == 200 and c.status_code == 200, c.text[:300]
            assert c.json()["cards"]
            worst_health, worst_call = max(worst_health, t1 - t0), max(worst_call, t2 - t1)
            time.sleep(0.5)
        assert worst_health < 1.0 and worst_call < 1.0, (worst_health, worst_call)
    finally:
        stop.set()
        for s in slow:
            s.close()


def test_a_request_that_does_not_arrive_in_time_gets_a_json_408(served):
    _, port = served
    t0 = time.monotonic()
    answer = raw(port, f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nX-Never: ".encode(), timeout=15)
    waited = time.monotonic() - t0
    assert_json_error(answer, 408)
    assert 2.5 <= waited < 10, waited  # MSKCDS_REQUEST_HEADER_TIMEOUT=3 (and the 1 s sweep)


# --------------------------------------------------------------------------- gunicorn's errors
@pytest.mark.parametrize("request_bytes, status", [
    (b"NOT A REQUEST LINE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"POST /cds-services/bone-muscle-health HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST /cds-services/bone-muscle-health HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
], ids=["request-line", "uri-too-long", "headers-too-large", "chunked-not-last",
        "transfer-coding", "two-content-lengths"])
def test_the_servers_own_errors_are_json_with_our_headers(served, request_bytes, status):
    _, port = served
    doc = assert_json_error(raw(port, request_bytes), status)
    # Nothing of the request is echoed (it could carry anything).
    assert "aaaa" not in json.dumps(doc) and "NOT A REQUEST" not in json.dumps(doc)


def test_no_server_banner_on_application_answers(served):
    base, _ = served
    r = requests.get(base + "/healthz", timeout=5)
    assert r.status_code == 200 and "Server" not in r.headers
    r = requests.get(base + "/nope", timeout=5)
    assert r.status_code == 404 and "Server" not in r.headers


# --------------------------------------------------------------------------- framing
def test_expect_100_continue_chunked_and_pipelined_requests(served):
    _, port = served
    body = example_body()
    answer = raw(port, f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n"
                       "Connection: close\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert answer.count(b"100 Continue") == 1

    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 700]), body[i:i + 700])
                       for i in range(0, len(body), 700)) + b"0\r\n\r\n"
    answer = raw(port, f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + chunked)
    status, _, payload = split(answer)
    assert status == 200 and json.loads(payload)["cards"]

    one = (f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = raw(port, one + one + health)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[:200]


def test_tests_serve_with_the_same_worker_class(tmp_path):
    """The real-server tests run what `mskcds serve` runs (conftest builds the same argv)."""
    server = ServerProcess({"MSKCDS_REQUIRE_AUTH": "false",
                            "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
                           workers=1, log_path=tmp_path / "log").start()
    try:
        doc = assert_json_error(raw(server.port, b"NOT A REQUEST LINE\r\n\r\n"), 400)
        assert doc["issue"][0]["code"] == "invalid"
    finally:
        server.stop()


def test_ten_thousand_observations_are_accepted_by_default(served):
    """A long history (10,000 Observations, ~6 MB as JSON) fits the default body limit."""
    base, _ = served
    doc = json.loads((EXAMPLES / "low-bone-mass.request.json").read_text(encoding="utf-8"))
    entries = doc["prefetch"]["observations"]["entry"]
    template = entries[0]["resource"]
    many = []
    for i in range(10_000):
        res = json.loads(json.dumps(template))
        res["id"] = f"hist-{i}"
        res["effectiveDateTime"] = f"{1990 + i % 30:04d}-{1 + i % 12:02d}-{1 + i % 28:02d}"
        many.append({"resource": res})
    doc["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset",
                                       "total": len(many), "entry": many}
    body = json.dumps(doc).encode()
    assert len(body) > 5 * 1024 * 1024  # more than the old 5 MiB default
    r = requests.post(base + SERVICE, data=body, headers={"Content-Type": "application/json"},
                      timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["cards"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    """413 from the worker on Content-Length (or a chunk size) alone, connection closed:
    no thread reads or drains a body the service refuses; no 100 Continue for it."""
    _, port = served
    from cds.config import Config

    limit = Config().max_body_bytes
    t0 = time.monotonic()
    answer = raw(port, f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Expect: 100-continue\r\nContent-Length: {limit + 1}\r\n\r\n".encode())
    assert time.monotonic() - t0 < 5
    assert b"100 Continue" not in answer
    doc = assert_json_error(answer, 413)
    assert str(limit) in doc["issue"][0]["diagnostics"]
    answer = raw(port, f"POST {SERVICE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Transfer-Encoding: chunked\r\n\r\n{limit + 1:x}\r\n{{".encode())
    assert_json_error(answer, 413)
