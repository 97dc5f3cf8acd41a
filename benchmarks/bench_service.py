"""Side-by-side speed of ``bone-muscle-health`` and the floor of this stack, measured with wrk.

Every target is served at once (each its own gunicorn, the same shape as ``mskcds serve``
with its defaults, on 127.0.0.1) and measured in rotated rounds, so machine load spreads
over all targets instead of becoming a ratio. Per target: req/s, p50/p99 (from wrk) and
server CPU ms per request (utime + stime of the server's processes, from ``/proc``).

Floors (a bare Flask app served the same way, same request body):

* ``floor: constant``  -- answer a constant JSON document (body not read);
* ``floor: parse``     -- parse the body, answer one constant card;
* ``floor: build``     -- parse the body, build the same cards the service answers
  (fresh uuids) and serialise them: what any service on this stack must at least do.

Scenarios: the typical patient-view request (Patient + 30 Observations, 20 KiB); auth on
(ES384, a fresh token per call) with the in-memory and with the default (SQLite) replay
cache; 1,000 and 10,000 Observations; the no-prefetch fallback against a FHIR server that
waits 50 ms per request; an order-sign call with 5 draft orders (bench_orders.py's request)
beside a patient-view call on the same record (its ratio: order-sign / patient-view). In-process: cost from 100 to 10,000 Observations (slope per
Observation). Results go to ``--out`` as JSON and a Markdown table.

    python benchmarks/bench_service.py [--seconds 5] [--rounds 3] [--connections 4]
    python benchmarks/bench_service.py --tiny     # a few seconds: checks the machinery
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
EXAMPLES = REPO / "fhir_examples"
SERVICE = "/cds-services/bone-muscle-health"
PATIENT_ID = "bench-patient"
OBSERVATIONS = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
FALLBACK_DELAY = 0.05
FALLBACK = "no-prefetch fallback (FHIR 50 ms/request)"
ORDER_SIGN = "order-sign (5 draft orders)"
ORDER_VIEW = "patient-view, same record as order-sign"
ORDER_SERVICE = "/cds-services/bone-health-order-sign"


# --------------------------------------------------------------------------- the request
#: The examples the typical record takes its Observations from (the first one of each code, in
#: this order). Named, not globbed: a new example must not change what the benchmark measures
#: (the record gets 2 cards: osteoporosis and vitamin D below the bone target).
TYPICAL_EXAMPLES = (
    "bmd-below-expected-for-age", "dxa-screening-due", "fracture-treatment-gap", "healthy",
    "low-bone-mass", "low-muscle-mass", "osteoporosis", "osteosarcopenia", "sarcopenia-confirmed",
    "sarcopenia-probable", "sarcopenia-severe", "vitamin-d-below-bone-target",
    "vitamin-d-deficiency-kidney-failure", "vitamin-d-deficiency", "vitamin-d-excess",
    "vitamin-d-insufficiency")


def typical_request(n_obs: int = OBSERVATIONS) -> dict[str, Any]:
    """One patient with a history of every observation kind the named examples use."""
    by_code: dict[str, dict[str, Any]] = {}
    base = json.loads((EXAMPLES / "osteosarcopenia.request.json").read_text())
    for path in (EXAMPLES / f"{name}.request.json" for name in TYPICAL_EXAMPLES):
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
            dt = datetime.fromisoformat(when.replace("Z", "+00:00")) - timedelta(days=years_back)
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


# --------------------------------------------------------------------------- floor app
FLOOR_APP = '''
import copy, json, os, uuid
from flask import Flask, Response, request

application = Flask("floor")
with open(os.environ["BENCH_CARDS"]) as fh:
    CARDS = json.load(fh)
CONSTANT = json.dumps({"cards": CARDS[:1]})


def _answer(text):
    resp = Response(text, mimetype="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@application.post("/floor/constant")
def constant():
    return _answer('{"cards":[]}')


@application.post("/floor/parse")
def parse():
    json.loads(request.get_data())
    return _answer(CONSTANT)


@application.post("/floor/build")
def build():
    json.loads(request.get_data())
    cards = copy.deepcopy(CARDS)
    for card in cards:
        card["uuid"] = str(uuid.uuid4())
        for s in card.get("suggestions") or []:
            s["uuid"] = str(uuid.uuid4())
    return _answer(json.dumps({"cards": cards}, separators=(",", ":"), ensure_ascii=False))


@application.get("/healthz")
def healthz():
    return {"status": "ok"}
'''


# --------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(port: int, extra: list[str]) -> list[str]:
    """``mskcds serve`` as a user runs it (its defaults are what is measured)."""
    return [str(Path(sys.executable).parent / "mskcds"), "serve", "--host", "127.0.0.1",
            "--port", str(port), *extra]


def floor_command(port: int) -> list[str]:
    """The floor app, served exactly as ``mskcds serve`` serves the service."""
    try:
        from cds.http import server
    except ImportError:  # a checkout from before the serving layer: its fixed shape
        return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--worker-class", "gthread", "--threads", "4", "--preload",
                "--no-control-socket", "--access-logfile", "/dev/null", "floor_app:application"]
    args = cli_serve_args(port)
    return server.gunicorn_argv("127.0.0.1", port, workers=args.workers,
                                threads=args.threads, app="floor_app:application")


def cli_serve_args(port: int) -> Any:
    """`mskcds serve`'s own defaults (workers, threads), as its parser gives them."""
    from cds.cli.main import build_parser

    return build_parser().parse_args(["serve", "--host", "127.0.0.1", "--port", str(port)])


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path,
                 log: Path):
        self.name = name
        self.port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else \
            int(cmd[cmd.index("--bind") + 1].rsplit(":", 1)[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: server exited with {self.proc.returncode} "
                                 f"(log: {self._log.name})")
            try:
                if requests.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name}: server did not start")

    def cpu_seconds(self) -> float:
        """utime + stime of every live process in the server's process group."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            rest = stat.rsplit(")", 1)[1].split()
            if int(rest[2]) == self.proc.pid:
                total += int(rest[11]) + int(rest[12])
        return total / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- wrk
WRK_LUA = r'''
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local tokens = {}
local tf = os.getenv("BENCH_TOKENS")
if tf and tf ~= "" then
  for line in io.lines(tf) do tokens[#tokens + 1] = line end
end
local i = 0
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
request = function()
  if #tokens > 0 then
    i = i + 1
    local t = tokens[((i - 1) % #tokens) + 1]
    local h = {}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["Authorization"] = "Bearer " .. t
    return wrk.format(nil, nil, h, body)
  end
  return wrk.format()
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
'''


def run_wrk(url: str, body_file: Path, seconds: float, connections: int, lua: Path,
            tokens_file: Path | None = None) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(seconds)))}s", "--timeout", "10s",
           "-s", str(lua), url]
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_TOKENS": str(tokens_file or "")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])
    raise SystemExit(f"wrk gave no result for {url}: {out.stdout[-500:]} {out.stderr[-500:]}")


# --------------------------------------------------------------------------- targets
class Target:
    def __init__(self, name: str, server: Server, path: str, body_file: Path, *,
                 connections: int, tokens: Any = None, floor: bool = False):
        self.name = name
        self.server = server
        self.path = path
        self.body_file = body_file
        self.connections = connections
        self.tokens = tokens          # callable(n) -> path of a file with n fresh tokens
        self.floor = floor
        self.rounds: list[dict[str, Any]] = []

    def measure(self, seconds: float, lua: Path, workdir: Path) -> dict[str, Any]:
        tokens_file = self.tokens(workdir, seconds) if self.tokens else None
        before = self.server.cpu_seconds()
        r = run_wrk(self.server.base + self.path, self.body_file, seconds, self.connections,
                    lua, tokens_file)
        r["cpu_s"] = self.server.cpu_seconds() - before
        self.rounds.append(r)
        return r

    def summary(self) -> dict[str, Any]:
        n = sum(r["requests"] for r in self.rounds)
        dur = sum(r["duration_us"] for r in self.rounds) / 1e6
        cpu = sum(r["cpu_s"] for r in self.rounds)
        return {"requests": n, "errors": sum(r["errors"] + r["status_errors"] for r in self.rounds),
                "rps": n / dur if dur else 0.0,
                "p50_ms": statistics.median(r["p50_us"] for r in self.rounds) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in self.rounds) / 1000,
                "cpu_ms_per_request": cpu / n * 1000 if n else None,
                "rounds": len(self.rounds)}


def auth_module() -> Any:
    try:
        from cds.security import tokens  # key and token tooling (since the security split)
        return tokens
    except ImportError:
        pass
    try:
        from cds.security import auth
    except ImportError:  # a checkout from before the package layout
        from cds import auth  # type: ignore[no-redef]
    return auth


def token_maker(key_file: Path, iss: str, aud: str, kid: str):
    auth = auth_module()
    key, _kid, alg = auth.load_private_key(str(key_file))

    def make(workdir: Path, seconds: float) -> Path:
        # Enough fresh tokens for the round (wrk cycles: a reuse would be a refused replay).
        n = int(seconds * 3000) + 200
        path = workdir / f"tokens-{uuid.uuid4().hex}.txt"
        path.write_text("\n".join(auth.mint_token(key, iss=iss, aud=aud, kid=kid, alg=alg,
                                                  lifetime=300) for _ in range(n)) + "\n")
        return path
    return make


# --------------------------------------------------------------------------- in-process
def in_process_scaling(sizes: list[int], repeats: int, workdir: Path) -> dict[str, Any]:
    """Wall time per call (in-process, Flask test client, auth off) by Observation count."""
    from cds import create_app

    app = create_app({"require_auth": False, "log_level": "WARNING",
                      "database_url": f"sqlite:///{workdir / 'inproc.sqlite3'}"})
    client = app.test_client()
    points = []
    for n in sizes:
        body = json.dumps(typical_request(n)).encode()
        times = []
        status = None
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            resp = client.post(SERVICE, data=body, content_type="application/json")
            dt = time.perf_counter() - t0
            status = resp.status_code
            if i:  # the first call warms the caches
                times.append(dt)
        points.append({"observations": n, "bytes": len(body), "status": status,
                       "ms": statistics.median(times) * 1000})
    ok = [p for p in points if p["status"] == 200]
    slope = None
    if len(ok) >= 2:
        xs = [p["observations"] for p in ok]
        ys = [p["ms"] for p in ok]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
                 / sum((x - mx) ** 2 for x in xs)) * 1000  # µs per Observation
    return {"points": points, "us_per_observation": slope}


# --------------------------------------------------------------------------- report
def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    floors = {name: r for name, r in results.items() if r.get("floor")}
    out: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        if r.get("floor") or not r["rps"]:
            continue
        row = {f"rps / {f}": r["rps"] / fr["rps"] for f, fr in floors.items() if fr["rps"]}
        build = floors.get("floor: build")
        if build and build["p99_ms"]:
            row["p99 / floor: build p99"] = r["p99_ms"] / build["p99_ms"]
        out[name] = row
    fallback = results.get(FALLBACK)
    if fallback and fallback["rps"]:
        out.setdefault(FALLBACK, {})["p50 / FHIR delay"] = fallback["p50_ms"] / (FALLBACK_DELAY * 1000)
    view = results.get(ORDER_VIEW)
    if ORDER_SIGN in results and view and view["rps"]:
        out.setdefault(ORDER_SIGN, {})["rps / patient-view same record"] = (
            results[ORDER_SIGN]["rps"] / view["rps"])
    auth_off = results.get("typical")
    for name in ("auth on, replay memory", "auth on, replay default"):
        if name in results and auth_off and auth_off["rps"]:
            out.setdefault(name, {})["rps / auth off"] = results[name]["rps"] / auth_off["rps"]
    return out


def target_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed issue's targets, each with the measured figure and whether it is met."""
    t, rat, sc = report["targets"], report["ratios"], report.get("scaling") or {}
    checks: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: float, fmt: str, at_most: bool = True) -> None:
        if value is None:
            return
        met = value <= limit if at_most else value >= limit
        checks.append({"target": what, "measured": round(value, 3), "limit": limit,
                       "met": met, "text": f"{fmt.format(value)} ({'<=' if at_most else '>='} "
                                           f"{fmt.format(limit)})"})

    typ = t.get("typical")
    if typ:
        add("typical: server CPU ms per request", typ["cpu_ms_per_request"], 1.1, "{:.2f} ms")
        add("typical: req/s vs floor: build", rat["typical"].get("rps / floor: build"), 0.4,
            "{:.2f}x", at_most=False)
        add("typical: p99 vs floor: build p99", rat["typical"].get("p99 / floor: build p99"), 3.0,
            "{:.2f}x")
    if "auth on, replay default" in rat:
        add("auth on (default replay cache) vs auth off",
            rat["auth on, replay default"].get("rps / auth off"), 0.85, "{:.2f}x", at_most=False)
    ten = [p for p in sc.get("points", []) if p["observations"] == 10_000]
    if ten:
        add("10,000 Observations in-process (ms)", ten[0]["ms"] if ten[0]["status"] == 200
            else float("inf"), 250, "{:.0f} ms")
    if sc.get("us_per_observation") is not None:
        add("marginal cost per Observation (µs)", sc["us_per_observation"], 25, "{:.1f} µs")
    if FALLBACK in rat:
        add("fallback p50 vs the FHIR server's delay", rat[FALLBACK].get("p50 / FHIR delay"), 1.5,
            "{:.2f}x")
    return checks


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Measured {report['date']} on {report['machine']}; wrk, "
             f"{report['rounds']} rotated rounds of {report['seconds']} s, "
             f"serving: {report['serving']}.", "",
             "| target | req/s | p50 ms | p99 ms | server CPU ms/req | errors | ratios |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in report["targets"].items():
        rat = report["ratios"].get(name, {})
        rtext = ", ".join(f"{k} {v:.2f}" for k, v in rat.items())
        cpu = f"{r['cpu_ms_per_request']:.2f}" if r["cpu_ms_per_request"] is not None else "-"
        lines.append(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{cpu} | {r['errors']} | {rtext} |")
    if report.get("checks"):
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for c in report["checks"]:
            lines.append(f"| {c['target']} | {c['text']} | {'yes' if c['met'] else 'NO'} |")
    sc = report.get("scaling")
    if sc:
        lines += ["", "In-process (Flask test client, auth off), wall ms per call by Observations:",
                  "", "| Observations | KiB | status | ms |", "|---:|---:|---:|---:|"]
        for p in sc["points"]:
            lines.append(f"| {p['observations']} | {p['bytes'] / 1024:.0f} | {p['status']} | "
                         f"{p['ms']:.1f} |")
        if sc["us_per_observation"] is not None:
            lines += ["", f"Marginal cost: {sc['us_per_observation']:.1f} µs per Observation "
                      "(least squares over the points answered 200)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per target and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--serve-args", default="", help="extra `mskcds serve` arguments for the "
                    "service targets (e.g. '--workers 4 --threads 1')")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=ARGS",
                    help="another typical-request service target served with these "
                    "`mskcds serve` arguments (compare serving shapes side by side)")
    ap.add_argument("--plain-gthread", action="store_true",
                    help="also serve the typical request with gunicorn's plain gthread worker "
                    "(same shape): the throughput cost of the slow-client-proof worker")
    ap.add_argument("--scenarios", default="typical,auth,large,fallback,orders",
                    help="comma list of: typical, auth, large, fallback, orders")
    ap.add_argument("--scaling", default="100,1000,3000,10000",
                    help="Observation counts for the in-process run ('' to skip)")
    ap.add_argument("--tiny", action="store_true", help="1 round of 1 s, small scaling run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                    help="directory for bench.json and bench.md")
    args = ap.parse_args(argv)
    if args.tiny:
        args.seconds, args.rounds, args.scaling = 1.0, 1, "100,300"
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}

    from fhir_test_server import FhirTestServer

    auth_mod = auth_module()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    servers: list[Server] = []
    targets: list[Target] = []
    fhir = None
    with tempfile.TemporaryDirectory(prefix="mskcds-bench-") as tmp_s:
        tmp = Path(tmp_s)
        lua = tmp / "bench.lua"
        lua.write_text(WRK_LUA)
        (tmp / "floor_app.py").write_text(FLOOR_APP)
        typical = typical_request()
        bodies = {"typical": typical}
        if "large" in scenarios:
            bodies["1,000 Observations"] = typical_request(1000)
            bodies["10,000 Observations"] = typical_request(10_000)
        if "orders" in scenarios:
            import bench_orders

            bodies[ORDER_VIEW] = bench_orders.with_egfr(typical)
            bodies[ORDER_SIGN] = bench_orders.order_sign_request(bodies[ORDER_VIEW])
        body_files = {}
        for name, doc in bodies.items():
            body_files[name] = tmp / f"body-{len(body_files)}.json"
            body_files[name].write_text(json.dumps(doc))

        base_env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_LOG_LEVEL": "WARNING",
                    "PYTHONPATH": str(REPO)}
        serve_extra = args.serve_args.split()

        def service(name: str, env: dict[str, str], extra: list[str] | None = None) -> Server:
            port = free_port()
            db = tmp / f"db-{len(servers)}.sqlite3"
            s = Server(name, serve_command(port, serve_extra if extra is None else extra),
                       {**base_env, "MSKCDS_DATABASE_URL": f"sqlite:///{db}",
                        "MSKCDS_REPLAY_CACHE_URL": f"sqlite:///{tmp / f'replay-{len(servers)}.sqlite3'}",
                        **env}, REPO, tmp / f"server-{len(servers)}.log")
            servers.append(s)
            return s

        try:
            main_server = service("service", {})
            main_server.wait_healthy()
            check = requests.post(main_server.base + SERVICE, data=body_files["typical"].read_bytes(),
                                  headers={"Content-Type": "application/json"}, timeout=30)
            if check.status_code != 200:
                raise SystemExit(f"service: HTTP {check.status_code}: {check.text[:300]}")
            cards = check.json()["cards"]
            (tmp / "cards.json").write_text(json.dumps(cards))

            floor = Server("floor", floor_command(free_port()),
                           {**base_env, "BENCH_CARDS": str(tmp / "cards.json"),
                            "PYTHONPATH": f"{tmp}:{REPO}"}, tmp, tmp / "floor.log")
            servers.append(floor)
            c = args.connections
            for kind in ("constant", "parse", "build"):
                targets.append(Target(f"floor: {kind}", floor, f"/floor/{kind}",
                                      body_files["typical"], connections=c, floor=True))
            targets.append(Target("typical", main_server, SERVICE, body_files["typical"],
                                  connections=c))
            for spec in args.also:
                name, _, extra = spec.partition("=")
                targets.append(Target(name, service(name, {}, extra.split()), SERVICE,
                                      body_files["typical"], connections=c))
            if args.plain_gthread:
                from cds.http import server as serving

                port = free_port()
                shape = cli_serve_args(port)
                cmd = serving.gunicorn_argv("127.0.0.1", port,
                                            workers=shape.workers,
                                            threads=shape.threads)
                cmd[cmd.index(serving.WORKER_CLASS)] = "gthread"
                db = tmp / "db-gthread.sqlite3"
                s = Server("plain gthread", cmd, {**base_env, "MSKCDS_DATABASE_URL": f"sqlite:///{db}"},
                           REPO, tmp / "gthread.log")
                servers.append(s)
                targets.append(Target("typical, plain gthread worker", s, SERVICE,
                                      body_files["typical"], connections=c))
            if "auth" in scenarios:
                from cryptography.hazmat.primitives import serialization

                key = auth_mod.generate_key("ES384")
                key_file = tmp / "client.pem"
                key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
                jwks = tmp / "client.jwks.json"
                jwks.write_text(json.dumps(auth_mod.public_jwks(key, "bench-key", "ES384")))
                clients = tmp / "clients.yaml"
                clients.write_text(json.dumps({"clients": [
                    {"iss": "https://ehr.bench.example", "jwks_file": str(jwks)}]}))
                for label, replay in (("memory", "memory"), ("default", None)):
                    port = free_port()
                    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
                           "MSKCDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"}
                    if replay:
                        env["MSKCDS_REPLAY_CACHE_URL"] = replay
                    name = f"auth on, replay {label}"
                    s = Server(name, serve_command(port, serve_extra),
                               {**base_env, "MSKCDS_DATABASE_URL": f"sqlite:///{tmp / f'a-{label}.sqlite3'}",
                                **({} if replay else {"MSKCDS_REPLAY_CACHE_URL":
                                                      f"sqlite:///{tmp / 'replay-auth.sqlite3'}"}),
                                **env}, REPO, tmp / f"auth-{label}.log")
                    servers.append(s)
                    targets.append(Target(name, s, SERVICE, body_files["typical"], connections=c,
                                          tokens=token_maker(key_file, "https://ehr.bench.example",
                                                             s.base + SERVICE, "bench-key")))
            if "large" in scenarios:
                for name in ("1,000 Observations", "10,000 Observations"):
                    targets.append(Target(name, main_server, SERVICE, body_files[name],
                                          connections=2))
            if "orders" in scenarios:
                targets.append(Target(ORDER_VIEW, main_server, SERVICE, body_files[ORDER_VIEW],
                                      connections=c))
                targets.append(Target(ORDER_SIGN, main_server, ORDER_SERVICE,
                                      body_files[ORDER_SIGN], connections=c))
            if "fallback" in scenarios:
                fhir = FhirTestServer().start()
                fhir.delay = FALLBACK_DELAY
                doc = typical_request()
                fhir.load(doc["prefetch"]["patient"],
                          *[e["resource"] for e in doc["prefetch"]["observations"]["entry"]])
                bare = {k: v for k, v in doc.items() if k != "prefetch"}
                bare["fhirServer"] = fhir.base_url
                f = tmp / "body-fallback.json"
                f.write_text(json.dumps(bare))
                s = service("fallback", {"MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url})
                targets.append(Target(FALLBACK, s, SERVICE, f, connections=c))
            for s in servers:
                s.wait_healthy()
            for t in targets:  # warm up, and make sure each answers 200
                t.measure(1, lua, tmp)
                t.rounds.clear()
            for rnd in range(args.rounds):
                k = rnd % len(targets)
                for t in targets[k:] + targets[:k]:
                    t.measure(args.seconds, lua, tmp)
        finally:
            for s in servers:
                s.stop()
            if fhir is not None:
                fhir.stop()
        scaling = None
        if args.scaling:
            sizes = [int(x) for x in args.scaling.split(",") if x.strip()]
            scaling = in_process_scaling(sizes, 3 if max(sizes) > 1000 else 5, tmp)

    results = {}
    for t in targets:
        results[t.name] = {**t.summary(), "floor": t.floor, "path": t.path,
                           "body_bytes": t.body_file.stat().st_size if t.body_file.exists() else None,
                           "connections": t.connections}
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node() and 'Linux'} {platform.machine()}, {os.cpu_count()} CPUs, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "serving": "mskcds serve defaults" + (f" {args.serve_args}" if args.serve_args else ""),
        "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
        "targets": results, "ratios": ratios(results), "scaling": scaling,
        "cards": len(cards),
    }
    report["checks"] = target_checks(report)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out_dir / "bench.md").write_text(md)
    print(md)
    errors = sum(r["errors"] for r in results.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
