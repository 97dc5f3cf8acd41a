"""The JWKS fetcher's rules, in-process with a controllable fetch and a real drip-feeding peer."""
from __future__ import annotations

import threading
import time

import pytest

from auth_support import new_ec_signer
from cds.errors import Unauthorized
from cds.security.clients import parse_jwks
from cds.security.jwks import JwksFetchError, JwksFetcher, fetch_jwks
from slow_support import DripServer

URL = "https://ehr.example/jwks.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Endpoint:
    """What the fetcher fetches: keys, a failure, or a fetch that blocks until released."""

    def __init__(self, *signers) -> None:
        self.keys = parse_jwks({"keys": [s.jwk() for s in signers]}, strict=False)
        self.calls = 0
        self.fail: str | None = None
        self.gate: threading.Event | None = None

    def __call__(self, url: str, timeout: float):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise JwksFetchError(self.fail)
        return self.keys


class refused:
    """``with refused("reason"):`` — Unauthorized whose (logged) reason holds the text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        assert kind is Unauthorized, f"expected Unauthorized, got {kind}"
        assert self.text in exc.reason, exc.reason
        return True


def _settle(fetcher: JwksFetcher) -> None:
    deadline = time.monotonic() + 5
    while any(s.inflight for s in fetcher._states.values()) and time.monotonic() < deadline:
        time.sleep(0.005)


def test_first_contact_waits_for_the_fetch_and_the_cache_serves_after():
    a = new_ec_signer("https://ehr.example", "k1")
    endpoint, clock = Endpoint(a), Clock()
    fetcher = JwksFetcher(3600, fetch=endpoint, clock=clock)
    assert fetcher.key(URL, "k1").kid == "k1"
    for _ in range(5):
        assert fetcher.key(URL, "k1").kid == "k1"
    assert endpoint.calls == 1


def test_stale_set_is_served_while_the_refresh_runs_and_after_it_failed():
    a = new_ec_signer("https://ehr.example", "k1")
    endpoint, clock = Endpoint(a), Clock()
    fetcher = JwksFetcher(60, fetch=endpoint, clock=clock)
    fetcher.key(URL, "k1")
    clock.now += 61
    endpoint.gate, endpoint.fail = threading.Event(), "JWKS fetch from x failed: Timeout"
    started = time.monotonic()
    assert fetcher.key(URL, "k1").kid == "k1"  # no wait for the pending refresh
    assert time.monotonic() - started < 0.5
    endpoint.gate.set()
    _settle(fetcher)
    assert endpoint.calls == 2
    assert fetcher.key(URL, "k1").kid == "k1"  # the refresh failed: the cached set still serves


def test_unknown_kid_refetch_is_rate_limited_per_url():
    a = new_ec_signer("https://ehr.example", "k1")
    endpoint, clock = Endpoint(a), Clock()
    fetcher = JwksFetcher(3600, min_refresh_seconds=30, fetch=endpoint, clock=clock)
    fetcher.key(URL, "k1")
    assert fetcher.key(URL, "made-up-1") is None  # one refetch (rotation?)
    for i in range(20):
        assert fetcher.key(URL, f"made-up-{i + 2}") is None
    assert endpoint.calls == 2
    clock.now += 31
    assert fetcher.key(URL, "made-up-x") is None
    assert endpoint.calls == 3


def test_a_failed_first_fetch_is_not_retried_before_the_limit():
    endpoint, clock = Endpoint(), Clock()
    endpoint.fail = "JWKS fetch from x answered HTTP 500"
    fetcher = JwksFetcher(3600, min_refresh_seconds=30, fetch=endpoint, clock=clock)
    with refused("answered HTTP 500"):
        fetcher.key(URL, "k1")
    for _ in range(10):
        with refused("next attempt in 30 s"):
            fetcher.key(URL, "k1")
    assert endpoint.calls == 1


def test_only_one_request_per_url_waits_for_a_pending_fetch():
    a = new_ec_signer("https://ehr.example", "k1")
    endpoint = Endpoint(a)
    endpoint.gate = threading.Event()
    fetcher = JwksFetcher(3600, fetch_timeout=2.0, fetch=endpoint)
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(fetcher.key(URL, "k1")))
    waiter.start()
    time.sleep(0.1)
    started = time.monotonic()
    for _ in range(5):  # everybody else is turned away at once, not queued behind it
        with refused("in progress"):
            fetcher.key(URL, "k1")
    assert time.monotonic() - started < 0.2
    endpoint.gate.set()
    waiter.join(5)
    assert results and results[0].kid == "k1"
    assert endpoint.calls == 1


def test_one_total_deadline_per_fetch_against_a_drip_feeding_peer():
    with DripServer(interval=0.2) as drip:
        started = time.monotonic()
        with pytest.raises(JwksFetchError, match="took longer than 1 s"):
            fetch_jwks(drip.origin + "/jwks.json", timeout=1.0)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5, elapsed  # each byte came within any per-read timeout
