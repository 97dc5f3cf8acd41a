"""Latency of an order-sign call with 5 draft orders beside a patient-view call, on the same record.

The record is bench_service.py's typical patient (Patient + ~30 Observations) plus a current eGFR.
The order-sign request adds five draft orders that each exercise a check (alendronate, prednisone
10 mg for 6 months, cholecalciferol 4,000 IU/day, a 25(OH)D test and a DXA). Both are measured
in-process (``Engine.call``, no HTTP) and through a real gunicorn server (closed loop, one client
thread, keep-alive), each after a warm-up; figures are medians and 95th percentiles in ms.

    python benchmarks/bench_orders.py [--calls 300] [--http-calls 300]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE), str(REPO / "fhir_examples"), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_service import PATIENT_ID, typical_request  # noqa: E402
from conftest import ServerProcess  # noqa: E402
import make_order_examples as mo  # noqa: E402


def order_sign_request(record: dict[str, Any]) -> dict[str, Any]:
    today = datetime.now(timezone.utc).date()
    drafts = [mo.Med("Alendronate sodium 70 MG Oral Tablet", 1, "{tbl}", 1, 1, "wk", rxnorm="904431"),
              mo.Med("Prednisone 10 MG Oral Tablet", 1, "{tbl}", bounds_days=182, rxnorm="198145"),
              mo.Med("Cholecalciferol (vitamin D3) 4000 unit oral tablet", 4000, "[iU]"),
              mo.Test("25-Hydroxyvitamin D, serum", "62292-8"),
              mo.Test("DXA bone density", "38268-9")]
    resources = [mo._medication(d, f"bench-draft-{i}", PATIENT_ID, today) if isinstance(d, mo.Med)
                 else mo._test(d, f"bench-draft-{i}", PATIENT_ID, today) for i, d in enumerate(drafts)]
    body = copy.deepcopy(record)
    body["hook"] = "order-sign"
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection",
                                      "entry": [{"resource": r} for r in resources]}
    return body


def with_egfr(record: dict[str, Any]) -> dict[str, Any]:
    from cds.knowledge.terminology import load_terminology

    term = load_terminology(REPO / "rules")
    code = next(k for k, m in term.observation_codes.items() if m.kind == "egfr")
    system, value = code.rsplit("|", 1)
    obs = {"resourceType": "Observation", "id": "bench-egfr", "status": "final",
           "code": {"coding": [{"system": system, "code": value}]},
           "subject": {"reference": f"Patient/{PATIENT_ID}"},
           "effectiveDateTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT08:00:00Z"),
           "valueQuantity": {"value": 62, "unit": "mL/min/1.73m2", "system": "http://unitsofmeasure.org",
                             "code": "mL/min/{1.73_m2}"}}
    out = copy.deepcopy(record)
    out["prefetch"]["observations"]["entry"].append({"resource": obs})
    return out


def timed(fn: Callable[[], Any], n: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"median": statistics.median(samples), "p95": samples[int(0.95 * (len(samples) - 1))], "n": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--http-calls", type=int, default=300)
    args = ap.parse_args(argv)

    from cds.config import Config
    from cds.engine import Engine

    pv = with_egfr(typical_request())
    sign = order_sign_request(pv)
    engine = Engine(Config(require_auth=False))
    cards = engine.call("bone-health-order-sign", sign).response["cards"]
    results = {"cards": {"patient-view": len(engine.call("bone-muscle-health", pv).response["cards"]),
                         "order-sign": len(cards)},
               "in-process": {
                   "patient-view": timed(lambda: engine.call("bone-muscle-health", pv), args.calls),
                   "order-sign (5 drafts)": timed(lambda: engine.call("bone-health-order-sign", sign), args.calls)}}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_DATA_DIR": tmp,
                                "MSKCDS_LOG_LEVEL": "WARNING",
                                "MSKCDS_DATABASE_URL": f"sqlite:///{tmp}/b.sqlite3"}, workers=2)
        try:
            server.start()
            s = requests.Session()
            pv_body, sign_body = json.dumps(pv).encode(), json.dumps(sign).encode()
            headers = {"Content-Type": "application/json"}

            def post(path: str, body: bytes) -> None:
                r = s.post(server.url(path), data=body, headers=headers, timeout=30)
                assert r.status_code == 200, r.text

            results["http"] = {
                "patient-view": timed(lambda: post("/cds-services/bone-muscle-health", pv_body), args.http_calls),
                "order-sign (5 drafts)": timed(lambda: post("/cds-services/bone-health-order-sign", sign_body),
                                               args.http_calls)}
        finally:
            server.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
