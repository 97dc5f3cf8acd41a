"""Card preview page load time: POST /preview on a real gunicorn, opened in headless Chromium.

For each example in fhir_examples/ (or the ones named), the page is loaded N times in the browser
the way tests/http/test_pages_browser.py loads it (the navigation turned into the POST an EHR
sends); the figure is navigation start → load event (Navigation Timing), which includes the
server rendering the cards and the matplotlib charts. With the preview on, the app loads
matplotlib at start-up (before the workers fork); the very first load is reported separately.

    python benchmarks/bench_preview.py [--runs 5] [--examples osteosarcopenia sarcopenia-confirmed]

The machine is shared: compare figures within one run only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "fhir_examples"
sys.path.insert(0, str(REPO / "tests"))

from conftest import ServerProcess  # noqa: E402

CHROMIUM = os.environ.get("MSKCDS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def load_ms(page, url: str, body: str) -> float:
    page.unroute(url)
    page.route(url, lambda route: route.continue_(
        method="POST", post_data=body,
        headers={**route.request.headers, "Content-Type": "application/json"}))
    resp = page.goto(url, wait_until="load")
    assert resp is not None and resp.status == 200, resp and resp.text()
    nav = page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])")
    timing = json.loads(nav)
    return timing["loadEventEnd"] - timing["startTime"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--examples", nargs="*")
    args = parser.parse_args()
    names = args.examples or sorted(p.name[:-len(".request.json")]
                                    for p in EXAMPLES.glob("*.request.json"))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess({"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_PREVIEW_ENABLED": "true",
                                "MSKCDS_DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3"}, workers=1)
        server.start(timeout=120)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page()
                url = server.url("/preview")
                first = None
                rows = []
                for name in names:
                    body = (EXAMPLES / f"{name}.request.json").read_text()
                    if first is None:
                        first = load_ms(page, url, body)
                    times = [load_ms(page, url, body) for _ in range(args.runs)]
                    doc = json.loads(body)
                    n_obs = len((doc["prefetch"].get("observations") or {}).get("entry", []))
                    charts = page.locator("figure.chart-box").count()
                    size = len(page.content())
                    rows.append((name, n_obs, charts, size, statistics.median(times), max(times)))
                browser.close()
        finally:
            server.stop()
    print(f"first load after start-up: {first:.0f} ms")
    print(f"{'example':40} {'obs':>4} {'charts':>6} {'html KB':>8} {'median ms':>10} {'max ms':>8}")
    for name, n_obs, charts, size, med, worst in sorted(rows, key=lambda r: -r[1]):
        print(f"{name:40} {n_obs:4d} {charts:6d} {size / 1024:8.0f} {med:10.0f} {worst:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
