"""One client's slow JWKS endpoint must not stall any other client (real gunicorn, defaults).

Client C's ``jwks_url`` drip-feeds its answer (one byte every 0.5 s). An attacker who holds
no key at all sends tokens naming C's ``iss`` from 10 threads; meanwhile client A (keys
configured inline) calls the service. A's p99 during the attack is compared with its p99
before it, and the number of fetches C's endpoint saw is bounded by the rate limit.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests

from auth_support import new_ec_signer, write_clients
from conftest import run_server
from hardening_support import SERVICE, pv_body, templates, timed_calls
from slow_support import DripServer

pytestmark = pytest.mark.slow

EHR_A = "https://ehr-a.example.org"
EHR_C = "https://ehr-c.example.org"
CALL_TIMEOUT = 5.0


def test_drip_feeding_jwks_of_one_client_leaves_another_clients_p99_unchanged(tmp_path):
    a = new_ec_signer(EHR_A, "a-1")
    forger = new_ec_signer(EHR_C, "c-1")  # C's iss, a key C never published
    with DripServer(interval=0.5) as drip:
        clients = write_clients(tmp_path / "clients.yaml", [
            {"iss": EHR_A, "jwks": a.jwks()},
            {"iss": EHR_C, "jwks_url": drip.origin + "/jwks.json"}])
        env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(clients),
               "MSKCDS_JWKS_FETCH_TIMEOUT": "1"}
        with run_server(env, tmp_path) as server:  # 2 workers x 4 threads, as `mskcds serve`
            url = server.url(SERVICE)
            disc = server.url("/cds-services")
            body = pv_body(templates(server, a.bearer(disc)))
            session = requests.Session()

            def call_a() -> requests.Response:
                return session.post(url, json=body, headers=a.bearer(url), timeout=CALL_TIMEOUT)

            baseline = timed_calls(30, call_a, CALL_TIMEOUT)

            stop = threading.Event()
            attacker_statuses: Counter = Counter()

            def attack() -> None:
                s = requests.Session()
                while not stop.is_set():
                    try:
                        r = s.post(url, json=body, headers=forger.bearer(url), timeout=CALL_TIMEOUT)
                        attacker_statuses[r.status_code] += 1
                    except requests.RequestException as exc:
                        attacker_statuses[exc.__class__.__name__] += 1
                s.close()

            attackers = [threading.Thread(target=attack, daemon=True) for _ in range(10)]
            attack_started = time.monotonic()
            for t in attackers:
                t.start()
            time.sleep(1.0)
            during = timed_calls(40, call_a, CALL_TIMEOUT, pause=0.05, max_seconds=12)
            stop.set()
            for t in attackers:
                t.join(timeout=CALL_TIMEOUT + 1)
            attack_seconds = time.monotonic() - attack_started
            after = timed_calls(10, call_a, CALL_TIMEOUT, max_seconds=12)
            print(f"A baseline {baseline.summary()}\nA during attack {during.summary()}\n"
                  f"A after {after.summary()}\nattacker {dict(attacker_statuses)} in "
                  f"{attack_seconds:.1f} s; C's JWKS endpoint asked {drip.hits} times")
            assert set(baseline.statuses) == {200}
            assert set(during.statuses) == {200}, during.summary()
            assert set(after.statuses) == {200}, after.summary()
            assert during.p99 <= max(1.0, 3 * baseline.p99), (baseline.summary(), during.summary())
            # The attacker is refused (401), quickly, and never gets a 5xx.
            assert set(attacker_statuses) == {401}, attacker_statuses
            # Rate limit: one attempt per worker, then none for MSKCDS_JWKS_MIN_REFRESH_SECONDS.
            assert drip.hits <= 2, drip.hits
