"""Throughput and latency of ``bone-muscle-health`` against a bare Flask endpoint.

Both are served the same way (gunicorn, gthread, same workers and threads) on
127.0.0.1, and driven by the same closed-loop client (C threads, each with a
keep-alive session) with the same request body: a patient-view request whose
prefetch holds the Patient and ~30 Observations (25(OH)D, DXA T/Z/BMD, lean mass,
grip, gait, height...) built from fhir_examples/. Each run is bounded by a request
count and a time limit. Authentication is off for both (a JWT check would be
measured separately); everything else (validation, rules, cards, the issued-card
record in SQLite) is the real service.

    python benchmarks/bench_service.py [--requests 600] [--seconds 20] [--concurrency 4]

Note: the client runs on the same machine as the servers, so the figures are a
lower bound and comparable only within one run.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "fhir_examples"
SERVICE = "/cds-services/bone-muscle-health"
BARE = "/bare"
PATIENT_ID = "bench-patient"
OBSERVATIONS = 30


# --------------------------------------------------------------------------- the request
def typical_request(n_obs: int = OBSERVATIONS) -> dict[str, Any]:
    """One patient with a history of every observation kind the examples use."""
    by_code: dict[str, dict[str, Any]] = {}
    base = json.loads((EXAMPLES / "osteosarcopenia.request.json").read_text())
    for path in sorted(EXAMPLES.glob("*.request.json")):
        doc = json.loads(path.read_text())
        for entry in (doc["prefetch"].get("observations") or {}).get("entry", []):
            res = entry["resource"]
            code = json.dumps(res.get("code"), sort_keys=True)
            by_code.setdefault(code, res)
    kinds = list(by_code.values())
    if not kinds:
        raise SystemExit("no Observations in fhir_examples/*.request.json")
    entries = []
    for i in range(n_obs):
        res = copy.deepcopy(kinds[i % len(kinds)])
        years_back = i // len(kinds)
        res["id"] = f"bench-obs-{i}"
        res["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
        when = res.get("effectiveDateTime")
        if isinstance(when, str):
            dt = datetime.fromisoformat(when.replace("Z", "+00:00")) - timedelta(days=365 * years_back)
            res["effectiveDateTime"] = dt.isoformat().replace("+00:00", "Z")
        entries.append({"fullUrl": f"http://example.org/fhir/Observation/{res['id']}", "resource": res})
    patient = copy.deepcopy(base["prefetch"]["patient"])
    patient["id"] = PATIENT_ID
    req = copy.deepcopy(base)
    req["context"]["patientId"] = PATIENT_ID
    req["prefetch"]["patient"] = patient
    req["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset",
                                       "total": len(entries), "entry": entries}
    for key in ("conditions", "medications"):
        req["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    return req


# --------------------------------------------------------------------------- servers
BARE_APP = '''
import json
from flask import Flask, Response, request

application = Flask("bare")


@application.post("/bare")
def bare():
    body = json.loads(request.get_data())  # parse like the service does, answer like it
    return Response(json.dumps({"cards": [], "n": len(body)}), mimetype="application/json")


@application.get("/healthz")
def healthz():
    return {"status": "ok"}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    def __init__(self, app: str, workers: int, threads: int, env: dict[str, str],
                 pythonpath: str | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(workers), "--worker-class", "gthread", "--threads", str(threads),
               "--timeout", "30", "--preload", "--no-control-socket", "--access-logfile", "/dev/null",
               "--error-logfile", "/dev/null", "--log-level", "warning"]
        if pythonpath:
            cmd += ["--pythonpath", pythonpath]
        self.proc = subprocess.Popen(cmd + [app], cwd=REPO, env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --------------------------------------------------------------------------- load
def drive(url: str, body: bytes, total: int, seconds: float, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))
    deadline = time.monotonic() + seconds

    def worker() -> None:
        s = requests.Session()
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            t0 = time.perf_counter()
            r = s.post(url, data=body, headers=headers, timeout=30)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if r.status_code != 200:
                    errors.append(r.status_code)
        s.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(round(p / 100 * (len(latencies) - 1))))] * 1000

    return {"n": len(latencies), "errors": len(errors), "rps": len(latencies) / wall if wall else 0.0,
            "p50": pct(50), "p99": pct(99), "mean": statistics.fmean(latencies) * 1000, "wall": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=600, help="per target (upper bound)")
    ap.add_argument("--seconds", type=float, default=20.0, help="per target (upper bound)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)

    req = typical_request()
    body = json.dumps(req).encode()
    n_obs = len(req["prefetch"]["observations"]["entry"])
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bare_app.py").write_text(BARE_APP)
        env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_LOG_LEVEL": "WARNING",
               "MSKCDS_DATABASE_URL": f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"}
        targets = [("bare Flask", Gunicorn("bare_app:application", args.workers, args.threads, env,
                                           pythonpath=tmp), BARE),
                   ("bone-muscle-health", Gunicorn("cds.wsgi:application", args.workers,
                                                   args.threads, env), SERVICE)]
        try:
            for name, server, path in targets:
                server.wait_healthy()
                check = requests.post(server.base + path, data=body,
                                      headers={"Content-Type": "application/json"}, timeout=30)
                if check.status_code != 200:
                    raise SystemExit(f"{name}: HTTP {check.status_code}: {check.text[:300]}")
                if path == SERVICE:
                    results_cards = len(check.json()["cards"])
                drive(server.base + path, body, args.warmup, 10, args.concurrency)
                results[name] = drive(server.base + path, body, args.requests, args.seconds,
                                      args.concurrency)
                server.stop()
        finally:
            for _, server, _ in targets:
                server.stop()

    print(f"\nPOST {len(body) / 1024:.1f} KiB patient-view request (Patient + {n_obs} Observations; "
          f"service answers {results_cards} cards)")
    print(f"gunicorn gthread {args.workers} workers x {args.threads} threads, client "
          f"concurrency {args.concurrency}, <= {args.requests} requests / {args.seconds:.0f} s each, "
          f"127.0.0.1, {os.cpu_count()} CPUs shared by client and server\n")
    header = f"{'target':<20} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:<20} {r['n']:>8} {r['errors']:>6} {r['rps']:>8.1f} {r['p50']:>8.1f} "
              f"{r['p99']:>8.1f} {r['mean']:>8.1f}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
