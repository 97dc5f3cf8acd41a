"""Helpers of the fault tests: request bodies, timed calls, and what a worker process holds.

Figures come from the real processes: latencies measured by the client, thread and socket
counts and memory read from /proc of the gunicorn workers.
"""
from __future__ import annotations

import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import requests

SERVICE = "/cds-services/bone-muscle-health"


def templates(server: Any, headers: dict[str, str] | None = None) -> dict[str, str]:
    r = requests.get(server.url("/cds-services"), headers=headers or {}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["services"][0].get("prefetch", {})


#: The Patient of pv_body: a woman in her seventies (she is due a DXA: one card).
WOMAN = {"gender": "female", "birthDate": "1950-03-01"}


def pv_body(prefetch_templates: dict[str, str], patient_id: str = "hard-p1",
            patient_fields: dict[str, Any] = WOMAN, **over: Any) -> dict[str, Any]:
    """A patient-view request answering every prefetch key (a Patient, no results)."""
    prefetch: dict[str, Any] = {}
    for key, template in prefetch_templates.items():
        if template.startswith("Patient/"):
            prefetch[key] = {"resourceType": "Patient", "id": patient_id, **patient_fields}
        else:
            prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0,
                             "entry": []}
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/example", "patientId": patient_id},
            "prefetch": prefetch}
    body.update(over)
    return body


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)

    @property
    def p99(self) -> float:
        return percentile(self.seconds, 99)

    @property
    def p50(self) -> float:
        return percentile(self.seconds, 50)

    def summary(self) -> str:
        return (f"n={len(self.seconds)} p50={self.p50 * 1000:.0f} ms p99={self.p99 * 1000:.0f} ms "
                f"statuses={sorted(set(map(str, self.statuses)))}")


def timed_calls(n: int, call: Callable[[], requests.Response], timeout_value: float,
                pause: float = 0.0, max_seconds: float = 30.0) -> Timings:
    """``n`` calls in a row (stopping after ``max_seconds``, so a failing run stays short);
    a call that raised counts as ``timeout_value`` seconds."""
    out = Timings()
    ends = time.monotonic() + max_seconds
    for _ in range(n):
        if time.monotonic() > ends:
            break
        started = time.perf_counter()
        try:
            status: Any = call().status_code
            elapsed = time.perf_counter() - started
        except requests.RequestException as exc:
            status, elapsed = exc.__class__.__name__, timeout_value
        out.seconds.append(elapsed)
        out.statuses.append(status)
        if pause:
            time.sleep(pause)
    return out


# ------------------------------------------------------------------------------ /proc
def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn workers: the master's child processes."""
    try:
        text = open(f"/proc/{master_pid}/task/{master_pid}/children").read()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def socket_count(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            continue
    return n


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


# ------------------------------------------------------------------------------ load
@dataclass
class Outcome:
    at: float                 # monotonic start of the call
    call: Any                 # status of the service call (or the exception's name)
    feedback: Any = None      # status of the feedback post on its first card (None: none)
    transient_ok: bool = True  # a 503 carried Retry-After and an OperationOutcome 'transient'
    seconds: float = 0.0      # how long the service call took


class Load:
    """Client threads that each call the service and post feedback on the first card, in a
    loop, recording every outcome. ``add(n)`` starts more threads (e.g. when a fault begins)."""

    def __init__(self, server: Any, body_for: Callable[[], dict[str, Any]],
                 headers_for: Callable[[str], dict[str, str]], timeout: float = 5.0):
        self.url = server.url(SERVICE)
        self.feedback_url = server.url(SERVICE + "/feedback")
        self.body_for = body_for
        self.headers_for = headers_for
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        #: (seconds into the call, status, body) of every odd feedback answer, to say why
        self.odd: list[tuple[float, int, str]] = []
        self._stop = False
        self._threads: list[Any] = []

    def add(self, n: int) -> None:
        import threading

        for _ in range(n):
            t = threading.Thread(target=self._loop, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(timeout=self.timeout * 2 + 1)

    @staticmethod
    def _transient_ok(resp: requests.Response) -> bool:
        if resp.status_code != 503:
            return True
        try:
            issue = resp.json()["issue"][0]
        except (ValueError, KeyError, IndexError):
            return False
        return bool(resp.headers.get("Retry-After", "").isdigit()) and issue["code"] == "transient"

    def _loop(self) -> None:
        session = requests.Session()
        while not self._stop:
            started = time.monotonic()
            try:
                r = session.post(self.url, json=self.body_for(), headers=self.headers_for(self.url),
                                 timeout=self.timeout)
            except requests.RequestException as exc:
                self.outcomes.append(Outcome(started, exc.__class__.__name__))
                session = requests.Session()
                continue
            out = Outcome(started, r.status_code, transient_ok=self._transient_ok(r),
                          seconds=time.monotonic() - started)
            cards = r.json().get("cards") if r.status_code == 200 else None
            if cards:
                item = {"card": cards[0]["uuid"], "outcome": "overridden",
                        "outcomeTimestamp": "2026-01-01T00:00:00Z"}
                try:
                    f = session.post(self.feedback_url, json={"feedback": [item]},
                                     headers=self.headers_for(self.feedback_url),
                                     timeout=self.timeout)
                    out.transient_ok = out.transient_ok and self._transient_ok(f)
                    if f.status_code == 503 and self._transient_ok(f):
                        # As an EHR does: a 503 with Retry-After is answered by one retry after
                        # that pause (a card issued just after an outage may still be queued in
                        # the issuing worker's writer); the retry's answer is the outcome, also
                        # when the load is stopping meanwhile. A new connection: the pause
                        # outlasts the server's keep-alive, and a POST on a connection the
                        # server is closing fails on the client side.
                        time.sleep(min(int(f.headers["Retry-After"]), 5))
                        session.close()
                        session = requests.Session()
                        f = session.post(self.feedback_url, json={"feedback": [item]},
                                         headers=self.headers_for(self.feedback_url),
                                         timeout=self.timeout)
                        out.transient_ok = out.transient_ok and self._transient_ok(f)
                    out.feedback = f.status_code
                    if f.status_code != 200:
                        self.odd.append((round(time.monotonic(), 2), f.status_code,
                                         f.text[:200]))
                except requests.RequestException as exc:
                    out.feedback = exc.__class__.__name__
            self.outcomes.append(out)
            time.sleep(0.01)
        session.close()

    def between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.at < end]

    @staticmethod
    def ok(o: Outcome) -> bool:
        return o.call == 200 and o.feedback in (None, 200)

    def recovery_seconds(self, fault_end: float) -> float:
        """From the end of the fault to the start of the last failed call after it."""
        failed = [o.at for o in self.outcomes if o.at >= fault_end and not self.ok(o)]
        return max(failed) - fault_end if failed else 0.0


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(f"{o.call}/{o.feedback}" for o in outcomes))
