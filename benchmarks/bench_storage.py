"""Cost of recording issued cards (the hot-path write of every service call).

    .venv/bin/python benchmarks/bench_storage.py [--calls 500] [--postgres URL]

Times ``SqlStore.record_issued`` (one transaction, one executemany) per call for
answers of 1 and 3 cards, on a fresh SQLite file (WAL; synchronous NORMAL as served, and FULL for comparison) and,
given ``--postgres`` or MSKCDS_TEST_POSTGRES_URL, on PostgreSQL. Also with 4
threads writing at once (as a gunicorn worker's threads would). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cds import wire  # noqa: E402
from cds.config import Config  # noqa: E402
from cds import storage  # noqa: E402
from cds.store.storage import open_store  # noqa: E402


def card(i: int) -> dict:
    c = {"uuid": str(uuid.uuid4()), "summary": f"bench {i}", "indicator": "warning",
         "source": {"label": "bench", "topic": {"system": "https://example.org/bench",
                                                "code": f"finding-{i % 3}"}},
         "suggestions": [{"label": "s", "uuid": str(uuid.uuid4())}],
         "selectionBehavior": "at-most-one"}
    wire.check_card(c)
    return c


def measure(store, calls: int, per_call: int, threads: int = 1) -> dict:
    samples: list[float] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        local = []
        for _ in range(n):
            cards = [card(i) for i in range(per_call)]
            t0 = time.perf_counter()
            assert store.record_issued("bone-muscle-health", "patient-view", str(uuid.uuid4()), cards)
            local.append(time.perf_counter() - t0)
        with lock:
            samples.extend(local)

    store.record_issued("bone-muscle-health", "patient-view", str(uuid.uuid4()), [card(0)])  # warm
    workers = [threading.Thread(target=run, args=(calls // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    samples.sort()
    ms = [s * 1000 for s in samples]
    return {"cards_per_call": per_call, "threads": threads, "calls": len(ms),
            "median_ms": round(statistics.median(ms), 3),
            "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 3), "max_ms": round(ms[-1], 3)}


def measure_service_call(url: str, calls: int) -> dict | None:
    """A whole service call in-process (Flask test client), for scale: median ms, cards per call."""
    examples = sorted((Path(__file__).resolve().parent.parent / "fhir_examples")
                      .glob("*.request.json"))
    if not examples:
        return None
    from cds import create_app

    app = create_app({"database_url": url, "require_auth": False, "log_level": "WARNING"})
    client = app.test_client()
    bodies = [json.loads(p.read_text(encoding="utf-8")) for p in examples]
    samples, cards = [], 0
    for i in range(calls):
        body = dict(bodies[i % len(bodies)], hookInstance=str(uuid.uuid4()))
        t0 = time.perf_counter()
        r = client.post("/cds-services/bone-muscle-health", json=body)
        samples.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.get_data(as_text=True)[:200]
        cards += len(r.get_json()["cards"])
    samples.sort()
    return {"calls": calls, "cards_per_call": round(cards / calls, 2),
            "median_ms": round(statistics.median(samples), 3),
            "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--postgres", default=os.environ.get("MSKCDS_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"}
        if args.postgres:
            urls["postgresql"] = args.postgres
        for name, url in urls.items():
            store = open_store(Config.from_env({"database_url": url}, environ={}))
            results[name] = [measure(store, args.calls, 1), measure(store, args.calls, 3),
                             measure(store, args.calls, 3, threads=4)]
            if name == "sqlite":  # what the hot path would cost with an fsync per commit
                default = storage.ISSUED_SYNCHRONOUS
                storage.ISSUED_SYNCHRONOUS = "FULL"
                results["sqlite_synchronous_full"] = [measure(store, args.calls, 1),
                                                      measure(store, args.calls, 3)]
                storage.ISSUED_SYNCHRONOUS = default
            store.dispose()
        results["service_call_in_process_sqlite"] = measure_service_call(
            f"sqlite:///{Path(tmp) / 'service.sqlite3'}", min(args.calls, 200))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
