"""Durability of feedback under load: a real gunicorn with 3 workers, many concurrent
clients, and a worker SIGKILLed mid-run. Clients retry until they get a 2xx; afterwards
every acknowledged report is in the database exactly once and the report counts match.
Runs on SQLite (default) and on PostgreSQL (skipped locally without a server; CI runs it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from cds.config import Config
from cds.store.storage import open_store
from conftest import EXAMPLES, REPO, run_server
from feedback_support import (BACKENDS, SERVICE, make_card, new_database_url,  # noqa: F401
                              pg_databases, wait_on_record)

pytestmark = pytest.mark.slow

CLIENTS = 8
POSTS_PER_CLIENT = 30
WORKERS = 3


def worker_pids(master_pid: int) -> set[int]:
    path = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def wait_for_workers(master_pid: int, n: int, timeout: float = 20) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(master_pid)
        if len(pids) >= n:
            return pids
        time.sleep(0.1)
    raise AssertionError(f"gunicorn has {worker_pids(master_pid)} workers, wanted {n}")


def cards_from_service(server) -> list[dict]:
    """Cards from real service calls on the example requests (none until they exist)."""
    cards: list[dict] = []
    for path in sorted(EXAMPLES.glob("*.request.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        for _ in range(3):  # three calls each: three sets of cards
            body["hookInstance"] = str(uuid.uuid4())
            r = requests.post(server.url(f"/cds-services/{SERVICE}"), json=body, timeout=30)
            assert r.status_code == 200, f"{path.name}: {r.status_code} {r.text[:300]}"
            cards.extend(r.json()["cards"])
    return cards


def obtain_cards(server, store) -> tuple[list[dict], str]:
    examples = sorted(EXAMPLES.glob("*.request.json"))
    if examples:
        cards = cards_from_service(server)
        assert cards, f"{len(examples)} example requests in fhir_examples/ produced no card at all"
        # Every card the service answered with is on record (written off the request path,
        # moments after the answer), with its finding code.
        wait_on_record(store, cards)
        issued = {r["card_uuid"]: r for r in store.issued_rows()}
        for card in cards:
            row = issued[card["uuid"]]
            assert row["finding_code"] == card["source"].get("topic", {}).get("code")
            assert json.loads(row["suggestion_uuids"]) == [
                s["uuid"] for s in card.get("suggestions", [])]
        # ... and nothing about the patient: no identifier, no card text.
        stored = json.dumps([{k: str(v) for k, v in r.items()} for r in issued.values()])
        for path in examples:
            patient_id = json.loads(path.read_text(encoding="utf-8"))["context"]["patientId"]
            assert f'"{patient_id}"' not in stored and f"/{patient_id}" not in stored
        assert not any(c["summary"] in stored for c in cards)
        return cards, "service"
    # No example requests in the tree yet: issue spec-valid cards through the store API.
    cards = [make_card(f, 2) for f in ("vitd-deficiency", "osteoporosis", "sarcopenia")
             for _ in range(4)]
    assert store.record_issued(SERVICE, "patient-view", str(uuid.uuid4()), cards)
    return cards, "store"


class Client(threading.Thread):
    """Posts feedback batches; retries each post until a 2xx (or gives up after 60 s)."""

    def __init__(self, base_url: str, cards: list[dict], index: int, posts: int):
        super().__init__(daemon=True)
        self.url = base_url + f"/cds-services/{SERVICE}/feedback"
        self.cards, self.index, self.posts = cards, index, posts
        self.acked: list[dict] = []     # items of posts that got a 2xx
        self.attempted: list[dict] = []
        self.failures = Counter()
        self.done = 0
        self.error: str | None = None

    def batch(self, n: int) -> list[dict]:
        base = datetime(2026, 1, 1, tzinfo=timezone.utc)
        items = []
        for k in range(1 + n % 3):
            card = self.cards[(self.index * 7 + n * 3 + k) % len(self.cards)]
            # A unique outcomeTimestamp per report identifies it in the database.
            at = base + timedelta(seconds=self.index * 100_000 + n * 10 + k)
            stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
            if card.get("suggestions") and (n + k) % 2 == 0:
                items.append({"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": stamp,
                              "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}]})
            else:
                item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": stamp}
                if (n + k) % 3:  # a reason the card offered (or a made-up one), else none
                    offered = card.get("overrideReasons") or [
                        {"system": "https://example.org/or", "code": f"r{j}"} for j in range(2)]
                    pick = offered[(n + k) % len(offered)]
                    item["overrideReason"] = {"reason": {"system": pick["system"],
                                                         "code": pick["code"]}}
                items.append(item)
        return items

    def run(self) -> None:
        session = requests.Session()
        for n in range(self.posts):
            items = self.batch(n)
            self.attempted.extend(items)
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = session.post(self.url, json={"feedback": items}, timeout=15)
                    if 200 <= r.status_code < 300:
                        self.acked.extend(items)
                        break
                    self.failures[r.status_code] += 1
                    if r.status_code < 500:  # a 4xx is a bug in this test or the service
                        self.error = f"{r.status_code}: {r.text[:300]}"
                        return
                except requests.RequestException as exc:
                    self.failures[exc.__class__.__name__] += 1
                    session = requests.Session()
                if time.monotonic() > deadline:
                    session.close()
                    return
                time.sleep(0.05)
            self.done += 1
        session.close()  # no idle keep-alive connection holds up the server's shutdown


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_feedback_survives_a_killed_worker(backend, tmp_path, request):
    url = new_database_url(backend, tmp_path, request)
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_DATABASE_URL": url}
    with run_server(env, tmp_path, workers=WORKERS) as server:
        store = open_store(Config.from_env({"database_url": url}, environ={}))
        cards, source = obtain_cards(server, store)
        print(f"cards issued via the {source}: {len(cards)}")
        master = server.proc.pid
        first_workers = wait_for_workers(master, WORKERS)

        clients = [Client(server.base_url, cards, i, POSTS_PER_CLIENT) for i in range(CLIENTS)]
        for c in clients:
            c.start()
        # Kill one worker once the run is well under way, while the clients keep posting.
        total = CLIENTS * POSTS_PER_CLIENT
        deadline = time.monotonic() + 60
        while sum(c.done for c in clients) < total // 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = sorted(first_workers)[0]
        os.kill(victim, signal.SIGKILL)
        done_at_kill = sum(c.done for c in clients)
        assert done_at_kill < total, "the worker was killed after the run, not during it"
        for c in clients:
            c.join(timeout=180)
        assert not any(c.is_alive() for c in clients), "clients still running"

        # The master replaced the killed worker and still serves.
        assert server.proc.poll() is None
        now_workers = wait_for_workers(master, WORKERS)
        assert victim not in now_workers
        assert requests.get(server.url("/healthz"), timeout=5).status_code == 200

        acked = [item for c in clients for item in c.acked]
        attempted = [item for c in clients for item in c.attempted]
        failures = sum((c.failures for c in clients), Counter())
        print(f"reports acknowledged {len(acked)} of {len(attempted)}; failed attempts {dict(failures)}")
        assert [c.error for c in clients if c.error] == []
        assert sum(c.done for c in clients) == total, "a client gave up: a post never got a 2xx"

        rows = store.feedback_rows()
        key = lambda card, at: (card, at)  # noqa: E731
        stored = Counter(key(r["card_uuid"], r["outcome_timestamp"]) for r in rows)
        expected = Counter(key(i["card"], datetime.strptime(i["outcomeTimestamp"],
                                                            "%Y-%m-%dT%H:%M:%SZ")
                               .replace(tzinfo=timezone.utc)) for i in acked)
        assert len(expected) == len(acked)  # every report is unique by construction
        missing = expected - stored
        assert not missing, f"{len(missing)} acknowledged reports are not in the database"
        duplicated = {k: n for k, n in stored.items() if n > 1}
        assert not duplicated, f"reports stored more than once: {list(duplicated)[:3]}"
        assert set(stored) == set(expected), "rows that no client reported"

        # The report (CLI, JSON) counts exactly what was acknowledged.
        finding_of = {c["uuid"]: c["source"].get("topic", {}).get("code") for c in cards}
        want: dict[str, Counter] = {}
        for item in acked:
            want.setdefault(finding_of[item["card"]] or "(no topic)", Counter())[item["outcome"]] += 1
        cli = subprocess.run([sys.executable, "-m", "cds.cli.main", "feedback-report", "--format", "json"],
                             cwd=REPO, env={**os.environ, "MSKCDS_DATABASE_URL": url},
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        report = json.loads(cli.stdout)
        issued = Counter(finding_of[c["uuid"]] or "(no topic)" for c in cards)
        for finding, outcomes in want.items():
            assert report[finding]["accepted"] == outcomes["accepted"], finding
            assert report[finding]["overridden"] == outcomes["overridden"], finding
            assert report[finding]["issued"] == issued[finding], finding
            reasons = Counter()
            for item in acked:
                if finding_of[item["card"]] == finding and item["outcome"] == "overridden":
                    coding = item.get("overrideReason", {}).get("reason")
                    reasons[f"{coding['system']}|{coding['code']}" if coding
                            else "(no reason given)"] += 1
            assert report[finding]["override_reasons"] == dict(reasons), finding
