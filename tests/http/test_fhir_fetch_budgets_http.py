"""FHIR-server fallback within its budgets (real gunicorn, real peers on 127.0.0.1).

* Threads and sockets: a FHIR server that drip-feeds its answers kept a fetch thread and a
  socket per key of every call after the time budget ended (245 threads and 230 sockets
  after 60 calls, still there 30 s later). Now the call's sockets are shut down when the
  budget ends and its fetch threads go back to the worker's pool before the call returns; the
  threads and sockets of the workers are counted after each of two rounds of 60 such calls.
* Memory: one call read up to 4 keys x 10 pages of 32 MiB each (a worker went from 88 to
  671 MB). Now one byte budget per call (MSKCDS_FHIR_MAX_CALL_BYTES) across all keys and
  pages; the read stops at it with a 412 naming the key; RSS is read from /proc.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests

from conftest import run_server
from fhir_test_server import FhirTestServer
from hardening_support import SERVICE, memory_kib, socket_count, thread_count, worker_pids
from slow_support import DripServer

pytestmark = pytest.mark.slow

BUDGET = 0.5


def _request(fhir_base: str) -> dict:
    """A patient-view call without prefetch: every key must be fetched from fhirServer."""
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": fhir_base,
            "context": {"userId": "Practitioner/example", "patientId": "slow-p1"}}


def _held(master: int) -> tuple[int, int]:
    pids = worker_pids(master)
    return sum(thread_count(p) for p in pids), sum(socket_count(p) for p in pids)


def test_no_thread_or_socket_outlives_a_call_whose_budget_ran_out(tmp_path):
    # 0.2 s per byte: within any per-read timeout, so only the budget can end the read.
    with DripServer(interval=0.2, max_seconds=90) as drip:
        base = drip.origin + "/fhir"
        env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": base,
               "MSKCDS_FHIR_TOTAL_BUDGET": str(BUDGET)}
        with run_server(env, tmp_path) as server:
            url = server.url(SERVICE)
            master = server.proc.pid
            statuses: list[int] = []
            elapsed: list[float] = []

            def client(n: int) -> None:
                s = requests.Session()
                for _ in range(n):
                    started = time.monotonic()
                    r = s.post(url, json=_request(base), timeout=10)
                    elapsed.append(time.monotonic() - started)
                    statuses.append(r.status_code)
                s.close()

            def run_clients(calls_each: int) -> None:
                clients = [threading.Thread(target=client, args=(calls_each,)) for _ in range(4)]
                for c in clients:
                    c.start()
                for c in clients:
                    c.join(timeout=60)

            # Warm up with the same 4 concurrent clients: gthread starts its request threads
            # on demand, and the first call of a worker loads modules lazily.
            run_clients(2)
            time.sleep(BUDGET + 1)
            threads0, sockets0 = _held(master)
            # Each worker's fetch threads are a pool its calls reuse, started on demand: at
            # most one per prefetch key (6) of each call it runs at once, on its 4 request
            # threads (themselves started on demand). More would be threads left behind by
            # calls whose budget ran out.
            pool_bound = len(worker_pids(master)) * 4 * (1 + 6)
            for round_ in (1, 2):
                statuses.clear()
                elapsed.clear()
                run_clients(15)
                time.sleep(1.0)
                threads1, sockets1 = _held(master)
                time.sleep(4.0)
                threads2, sockets2 = _held(master)
                print(f"round {round_}, 60 calls: statuses {sorted(set(statuses))}, max "
                      f"{max(elapsed):.2f} s; worker threads {threads0} -> {threads1} -> "
                      f"{threads2} (5 s later, fetch pools at most +{pool_bound}), sockets "
                      f"{sockets0} -> {sockets1} -> {sockets2}; drip server connections still "
                      f"open {drip.open} of {drip.hits}")
                assert statuses == [412] * 60
                assert max(elapsed) < BUDGET + 1.0
                # Nothing piles up: sockets back to a few more than before the calls, threads
                # within what the fetch pools may hold, and no more after the second round.
                assert sockets1 <= sockets0 + 4 and sockets2 <= sockets0 + 2, (sockets0, sockets1)
                assert threads1 <= threads0 + pool_bound and threads2 <= threads1, \
                    (threads0, threads1, threads2)
                assert drip.open <= 2


def _page(size: int) -> bytes:
    """A searchset Bundle of about ``size`` bytes (valid JSON, one big narrative)."""
    doc = {"resourceType": "Bundle", "type": "searchset", "total": 1,
           "entry": [{"resource": {"resourceType": "Observation", "id": "big", "status": "final",
                                   "code": {"text": "x" * size}}}]}
    return json.dumps(doc).encode()


def test_one_byte_budget_per_call_bounds_memory_and_names_the_key(tmp_path):
    big = _page(30 * 1024 * 1024)
    junk = b"\x00" * (100 * 1024 * 1024)
    with FhirTestServer() as fhir:
        fhir.load({"resourceType": "Patient", "id": "big-p1", "gender": "female",
                   "birthDate": "1950-01-01"})
        mode = {"body": big}

        def answer(path: str, query: dict):
            if "/Patient/" in path:
                return None
            return 200, {"Content-Type": "application/fhir+json"}, mode["body"]

        fhir.override = answer
        env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url}
        with run_server(env, tmp_path, workers=1) as server:
            url = server.url(SERVICE)
            (worker,) = worker_pids(server.proc.pid)
            body = {**_request(fhir.base_url), "context": {"userId": "Practitioner/example",
                                                             "patientId": "big-p1"}}
            before = memory_kib(worker)
            results = []
            for body_kind in ("big", "big", "big", "junk", "junk", "big"):
                mode["body"] = big if body_kind == "big" else junk
                started = time.monotonic()
                r = requests.post(url, json={**body, "hookInstance": str(uuid.uuid4())},
                                  timeout=30)
                results.append((body_kind, r.status_code, time.monotonic() - started, r.json()))
            after = memory_kib(worker)
            print(f"worker RSS {before['VmRSS'] // 1024} -> {after['VmRSS'] // 1024} MB, peak "
                  f"{after['VmHWM'] // 1024} MB; calls " +
                  ", ".join(f"{k} {s} {t:.2f}s" for k, s, t, _ in results))
            for kind, status, seconds, doc in results:
                assert status == 412, (kind, doc)
                assert seconds < 4.0 + 0.5, (kind, seconds)  # the 4 s budget, read included
                issues = doc["issue"]
                assert all(i["expression"][0].startswith("prefetch.") for i in issues)
                if kind == "big":
                    assert any("MSKCDS_FHIR_MAX_CALL_BYTES" in i["diagnostics"] for i in issues)
            # One call holds at most the 16 MiB budget (plus what parsing it needs).
            assert after["VmHWM"] - before["VmRSS"] < 200 * 1024, (before, after)
            assert after["VmRSS"] - before["VmRSS"] < 120 * 1024, (before, after)
