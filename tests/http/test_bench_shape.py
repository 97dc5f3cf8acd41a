"""The speed benchmark (benchmarks/bench_service.py) on a tiny configuration: its output shape.

Not a timing assertion: it checks that one run serves the floor targets and the service
at once (an order-sign call beside a patient-view call on the same record too), measures
each with wrk (req/s, p50/p99, server CPU per request from /proc), computes every ratio against the floors, runs the in-process Observation scaling with
its slope, and writes the JSON and the Markdown table the README quotes.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None,
                                reason="wrk not installed (apt-get install wrk; .ci/run does)")


def test_bench_tiny_run_has_every_target_ratio_and_the_scaling(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_service.py"), "--tiny",
                          "--scenarios", "typical,orders", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    targets = report["targets"]
    assert report["cards"] >= 1   # the typical record gets cards: card building is measured too
    assert {"floor: constant", "floor: parse", "floor: build", "typical",
            "patient-view, same record as order-sign", "order-sign (5 draft orders)"} <= set(targets)
    assert targets["order-sign (5 draft orders)"]["path"] == "/cds-services/bone-health-order-sign"
    for name, t in targets.items():
        assert t["requests"] > 0 and t["errors"] == 0, (name, t)
        assert t["rps"] > 0 and 0 < t["p50_ms"] <= t["p99_ms"], (name, t)
        assert t["cpu_ms_per_request"] > 0, (name, t)
    ratios = report["ratios"]["typical"]
    assert set(ratios) == {"rps / floor: constant", "rps / floor: parse", "rps / floor: build",
                           "p99 / floor: build p99"}
    assert all(v > 0 for v in ratios.values())
    assert report["ratios"]["order-sign (5 draft orders)"]["rps / patient-view same record"] > 0
    scaling = report["scaling"]
    assert [p["observations"] for p in scaling["points"]] == [100, 300]
    assert all(p["status"] == 200 for p in scaling["points"])
    assert isinstance(scaling["us_per_observation"], float)
    checks = {c["target"] for c in report["checks"]}
    assert "typical: server CPU ms per request" in checks
    assert "marginal cost per Observation (µs)" in checks
    md = (tmp_path / "bench.md").read_text()
    assert "| floor: build |" in md and "| typical |" in md and "µs per Observation" in md
