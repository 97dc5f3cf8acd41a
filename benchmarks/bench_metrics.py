"""What the Prometheus metrics cost per service call, in microseconds.

Two measurements, both in multiprocess mode (as under gunicorn: every update writes to a
memory-mapped file):

* updates: the metric updates one typical call makes (request count + latency, four
  prefetch keys, the cards), timed in a loop;
* end to end: the same service call through the app (Flask test client) with the real
  metrics, and with every metric method replaced by a no-op; the difference of medians.

    .venv/bin/python benchmarks/bench_metrics.py
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="bench-metrics-"))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cds import create_app, metrics  # noqa: E402

ROUNDS = 7


def updates_us(n: int = 20000) -> float:
    m = metrics.get()
    cards = [{"source": {"topic": {"code": "vitd-deficiency"}}, "indicator": "warning"}] * 2
    sources = {"patient": "prefetch", "observations": "prefetch", "conditions": "null",
               "medications": "prefetch"}

    def one() -> None:
        m.request("/cds-services/<service_id>", "bone-muscle-health", 200, 0.004)
        m.prefetch_sources("bone-muscle-health", sources)
        m.cards_issued(cards)

    for _ in range(2000):
        one()
    best = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            one()
        best.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(best)


def call_ms(client, body, n: int) -> float:
    times = []
    for _ in range(n):
        body["hookInstance"] = str(uuid.uuid4())
        start = time.perf_counter()
        r = client.post("/cds-services/bone-muscle-health", json=body)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, r.data
    return statistics.median(times)


def end_to_end_us(n: int = 300) -> tuple[float, float]:
    tmp = tempfile.mkdtemp()
    app = create_app({"require_auth": False, "database_url": f"sqlite:///{tmp}/b.sqlite3",
                      "log_level": "WARNING"})
    client = app.test_client()
    body = json.loads(sorted((REPO / "fhir_examples").glob("*.request.json"))[0].read_text())
    real = metrics.get()

    class NoOp:
        def __getattr__(self, name):
            return lambda *a, **k: None

    with_m, without = [], []
    for _ in range(ROUNDS):
        metrics._METRICS = real
        with_m.append(call_ms(client, copy.deepcopy(body), n // ROUNDS + 10))
        metrics._METRICS = NoOp()  # type: ignore[assignment]
        without.append(call_ms(client, copy.deepcopy(body), n // ROUNDS + 10))
    metrics._METRICS = real
    return statistics.median(with_m) * 1000, statistics.median(without) * 1000


if __name__ == "__main__":
    u = updates_us()
    w, wo = end_to_end_us()
    print(json.dumps({"metric_updates_per_call_us": round(u, 1),
                      "call_with_metrics_us": round(w), "call_without_metrics_us": round(wo),
                      "difference_us": round(w - wo)}, indent=1))
