"""evaluate + cards, in-process, for the largest example (osteosarcopenia): the median of 200 runs.

It was a timed unit test (median < 5 ms); speed is measured here, not asserted in the suite,
where machine load decides the answer. Run: .venv/bin/python benchmarks/bench_stages.py
"""
from __future__ import annotations

import json
import statistics
import time
from datetime import date
from pathlib import Path

from cds.cards.builder import build_cards
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    rules = load_rules(Config())
    payload = json.loads((REPO / "fhir_examples" / "osteosarcopenia.request.json").read_text())
    manifest = json.loads((REPO / "fhir_examples" / "examples.json").read_text())
    as_of = date.fromisoformat(manifest["as_of"])
    resources = [payload["prefetch"]["patient"]] + [
        e["resource"] for e in payload["prefetch"]["observations"]["entry"]]
    facts = normalize(resources, payload["context"]["patientId"], rules, as_of=as_of)
    timings = []
    for _ in range(200):
        start = time.perf_counter()
        build_cards(evaluate(facts, rules), facts, rules)
        timings.append((time.perf_counter() - start) * 1000)
    print(f"evaluate+cards median {statistics.median(timings):.3f} ms, "
          f"p90 {statistics.quantiles(timings, n=10)[-1]:.3f} ms (200 runs, osteosarcopenia)")


if __name__ == "__main__":
    main()
