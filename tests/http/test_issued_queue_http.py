"""Cards issued while the database is down still get their feedback (real PostgreSQL, stopped).

A throw-away PostgreSQL server (initdb in a temp dir, as .ci/run does; the shared test
server is never touched) backs a real gunicorn. Under load, the PostgreSQL server is
stopped for 10 s and started again. Every service call keeps answering 200 (advice comes
first); the issued-card records of the outage wait in each worker's bounded queue and are
written when the database is back; feedback on every card issued before, during and
after the outage then succeeds (a 503 with Retry-After while the database is away, never
a 404 "unknown card"). Before the writer, 1,452 such records were lost and their feedback
was refused as unknown forever.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds.config import Config
from cds.store.storage import open_store
from conftest import EXAMPLES, free_port, run_server
from feedback_support import wait_on_record

SERVICE = "/cds-services/bone-muscle-health"
OUTAGE_SECONDS = 10


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class ThrowAwayPostgres:
    """A PostgreSQL server of our own in a temp dir, on a free loopback port."""

    def __init__(self, root: Path):
        self.bin = _pg_bin()
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run([*self.run_as, *args], check=True, capture_output=True, timeout=timeout)

    def init(self) -> str:
        if self.run_as:
            shutil.chown(self.root, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync")
        self.start()
        subprocess.run([str(self.bin / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", "CREATE DATABASE mskcds_outage"], check=True, capture_output=True,
                       timeout=60)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mskcds_outage"

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture()
def postgres():
    if _pg_bin() is None:
        if os.environ.get("MSKCDS_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL binaries (initdb) are required but missing")
        pytest.skip("no PostgreSQL binaries (apt-get install postgresql)")
    # Directly under /tmp (as .ci/run does): the postgres user cannot enter pytest's tmp dirs.
    root = Path(tempfile.mkdtemp(prefix="mskcds-pg-outage-"))
    pg = ThrowAwayPostgres(root)
    try:
        url = pg.init()
        yield pg, url
    finally:
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


def example_bodies() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.request.json"))]


def test_cards_issued_while_postgres_is_down_get_their_feedback(postgres, tmp_path):
    pg, url = postgres
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_DATABASE_URL": url}
    bodies = example_bodies()
    with run_server(env, tmp_path, workers=2) as server:
        issued: list[tuple[float, dict]] = []
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            session = requests.Session()
            i = 0
            while not stop.is_set():
                body = dict(bodies[i % len(bodies)], hookInstance=str(uuid.uuid4()))
                i += 1
                try:
                    r = session.post(server.url(SERVICE), json=body, timeout=10)
                except requests.RequestException:
                    statuses.append(-1)
                    continue
                statuses.append(r.status_code)
                if r.status_code == 200:
                    now = time.monotonic()
                    issued.extend((now, c) for c in r.json()["cards"])
                time.sleep(0.02)
            session.close()

        threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(2)
            pg.stop()
            down_from = time.monotonic()
            # Feedback while the database is away: a retryable 503, never a 400 or a 500.
            time.sleep(2)
            during = [c for t0, c in issued if t0 > down_from]
            assert during, "no card was issued while the database was down"
            r = requests.post(server.url(SERVICE + "/feedback"), timeout=15, json={"feedback": [
                {"card": during[0]["uuid"], "outcome": "overridden",
                 "outcomeTimestamp": "2026-01-01T00:00:00Z"}]})
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text[:300]
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_from)))
            pg.start()
            up_at = time.monotonic()
            time.sleep(2)
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        in_outage = [c for t0, c in issued if down_from < t0 < up_at]
        assert len(in_outage) >= 10, len(in_outage)
        print(f"cards issued: {len(issued)}, during the {OUTAGE_SECONDS} s outage: {len(in_outage)}")

        # Feedback on every card: retried while it is 503, it must end 200 for each.
        session = requests.Session()
        first_ok = None
        for n, (_, card) in enumerate(issued):
            deadline = time.monotonic() + 20
            while True:
                r = session.post(server.url(SERVICE + "/feedback"), timeout=15, json={"feedback": [
                    {"card": card["uuid"], "outcome": "overridden",
                     "outcomeTimestamp": f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}Z"}]})
                if r.status_code == 200:
                    first_ok = first_ok or time.monotonic()
                    break
                assert r.status_code == 503, (r.status_code, r.text[:300])
                assert time.monotonic() < deadline, "feedback still refused 20 s after recovery"
                time.sleep(0.2)
        print(f"first feedback 200 {first_ok - up_at:.2f} s after PostgreSQL was back")
        session.close()

        store = open_store(Config.from_env({"database_url": url}, environ={}))
        wait_on_record(store, [c for _, c in issued])
        assert store.counts()["feedback"] == len(issued)
        log = server.log_text()
        assert "database unavailable, retrying" in log
        assert "after the database came back" in log
