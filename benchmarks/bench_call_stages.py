"""Where one typical patient-view call spends its CPU, stage by stage, in-process.

The call is bench_service.py's typical request (Patient + 30 Observations, 20 KiB, 2 cards),
posted through the Flask test client with the service's production defaults (auth off, the
per-card schema check off unless MSKCDS_CHECK_CARDS is set). Each stage function is wrapped
with a timer for the run; a stage's time includes what it calls (``build_cards`` includes
``check_card`` when that is on). "other" is the rest of the call: Flask/werkzeug, the test
client building the WSGI environ, the wrappers themselves (~1 µs each). CPU is
``time.thread_time`` (this thread only); medians over ``--calls`` calls after a warm-up. The
process CPU per call (every thread: the issued-card writer's too) is printed beside it.

    python benchmarks/bench_call_stages.py [--calls 500] [--fresh-ids] [--profile out.prof]

``--fresh-ids``: every call carries new Observation ids and values (nothing repeats from the
previous call, as for a patient seen for the first time); default: the same body every call
(a chart opened again).
"""
from __future__ import annotations

import argparse
import cProfile
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_service import SERVICE, typical_request  # noqa: E402

_spent: dict[str, float] = {}


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _spent[name] = _spent.get(name, 0.0) + time.thread_time() - t0
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def instrument(app: Any) -> list[str]:
    """Wrap each stage of a patient-view call; the stage names, in pipeline order."""
    from cds import engine as engine_mod
    from cds.http import services as services_mod
    from cds.http.state import state

    stages: list[tuple[str, Any, str]] = [
        ("read_json", services_mod, "read_json"),
        ("wire.load_hook_request", engine_mod.wire, "load_hook_request"),
        ("gather", engine_mod.gather_mod, "gather"),
        ("normalize", engine_mod.normalize_mod, "normalize"),
        ("evaluate", engine_mod.evaluate_mod, "evaluate"),
        ("build_cards", engine_mod.cards_mod, "build_cards"),
        ("wire.check_response", engine_mod.wire, "check_response"),
        ("json_response", services_mod, "json_response"),
    ]
    for name, owner, attr in stages:
        setattr(owner, attr, _timed(name, getattr(owner, attr)))
    with app.app_context():
        store = state().store
    store.queue_issued = _timed("store.queue_issued", store.queue_issued)
    names = [n for n, _, _ in stages]
    names.insert(names.index("json_response"), "store.queue_issued")
    return names


def fresh(body: dict[str, Any], i: int) -> dict[str, Any]:
    doc = copy.deepcopy(body)
    for n, entry in enumerate(doc["prefetch"]["observations"]["entry"]):
        res = entry["resource"]
        res["id"] = f"c{i}-o{n}"
        qty = res.get("valueQuantity")
        if isinstance(qty, dict) and isinstance(qty.get("value"), (int, float)):
            qty["value"] = qty["value"] + (i % 7) * 0.001
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--fresh-ids", action="store_true")
    ap.add_argument("--observations", type=int, default=None,
                    help="Observations in the request (default: the typical 30)")
    ap.add_argument("--profile", help="also write a cProfile of the measured calls here")
    args = ap.parse_args(argv)

    from cds import create_app
    from cds.http.state import state

    tmp = tempfile.mkdtemp(prefix="mskcds-stages-")
    app = create_app({"require_auth": False, "log_level": "WARNING",
                      "database_url": f"sqlite:///{tmp}/stages.sqlite3"})
    names = instrument(app)
    client = app.test_client()
    base = typical_request(args.observations) if args.observations else typical_request()
    warm = min(20, args.calls)
    bodies = [json.dumps(fresh(base, i) if args.fresh_ids else base).encode()
              for i in range(args.calls + warm)]
    for body in bodies[:warm]:   # warm-up
        assert client.post(SERVICE, data=body, content_type="application/json").status_code == 200
    per_stage: dict[str, list[float]] = {n: [] for n in names}
    totals: list[float] = []
    walls: list[float] = []
    prof = cProfile.Profile() if args.profile else None
    gc.collect()
    p0 = time.process_time()
    for body in bodies[warm:]:
        _spent.clear()
        if prof:
            prof.enable()
        w0, t0 = time.perf_counter(), time.thread_time()
        resp = client.post(SERVICE, data=body, content_type="application/json")
        t1, w1 = time.thread_time(), time.perf_counter()
        if prof:
            prof.disable()
        assert resp.status_code == 200, resp.status_code
        totals.append((t1 - t0) * 1000)
        walls.append((w1 - w0) * 1000)
        for n in names:
            per_stage[n].append(_spent.get(n, 0.0) * 1000)
    time.sleep(1.5)   # let the issued-card writer flush what the calls queued
    process_ms = (time.process_time() - p0) * 1000 / args.calls
    cards = len(resp.get_json()["cards"])
    with app.app_context():
        check_cards = state().config.check_cards
    total = statistics.median(totals)
    print(f"typical patient-view ({len(bodies[0]) // 1024} KiB, {cards} cards), "
          f"{args.calls} calls, {'fresh ids' if args.fresh_ids else 'same body'}, "
          f"check_cards={check_cards}")
    print(f"CPU per call: median {total:.3f} ms, p90 {statistics.quantiles(totals, n=10)[-1]:.3f} ms;"
          f" wall median {statistics.median(walls):.3f} ms")
    print(f"process CPU per call (every thread, the issued-card writer too): {process_ms:.3f} ms")
    print()
    print("| stage | CPU ms (median) | mean | share of mean call |")
    print("|---|---:|---:|---:|")
    mean_total = statistics.fmean(totals)
    covered = 0.0
    for n in names:
        med, mean = statistics.median(per_stage[n]), statistics.fmean(per_stage[n])
        covered += mean
        print(f"| {n} | {med:.3f} | {mean:.3f} | {mean / mean_total:.0%} |")
    other = mean_total - covered
    print(f"| other (Flask, werkzeug, test client) | - | {other:.3f} | {other / mean_total:.0%} |")
    print(f"| **call** | {total:.3f} | {mean_total:.3f} | 100% |")
    if prof:
        prof.dump_stats(args.profile)
        print(f"\ncProfile written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
