"""Prometheus metrics (``/metrics``), correct across gunicorn workers.

gunicorn runs several worker processes; each keeps its own counters. prometheus_client's
multiprocess mode writes every process's values to files in one directory
(``PROMETHEUS_MULTIPROC_DIR``) and a scrape adds them up. That directory must be chosen
before ``prometheus_client`` is first imported, so this module imports it lazily, and
``prepare_multiprocess_dir`` runs in the gunicorn master before the app is built.

Labels carry only this service's own vocabulary (route templates, service ids, finding
codes, fixed reason codes): never a patient id, a URL, an issuer or a token.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_SETTING = "MSKCDS_METRICS_DIR"
#: Request latency buckets (seconds): resolve 1 ms to 500 ms, with a tail for slow FHIR calls.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0)
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def prepare_multiprocess_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Choose and empty the directory the worker processes share (call in the master,
    before the app is built). ``MSKCDS_METRICS_DIR`` when set (its old ``*.db`` files are
    removed: counts start at zero with the server), else a new temporary directory that is
    removed when this process exits."""
    environ = os.environ if environ is None else environ
    configured = environ.get(DIR_SETTING)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="mskcds-metrics-"))
        owner = os.getpid()

        def _remove() -> None:  # forked workers inherit atexit handlers: only the owner removes
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)
        atexit.register(_remove)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def mark_process_dead(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live-gauge files (its counts stay)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class Metrics:
    """The service's metric families (one instance per process: see ``get``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mskcds_http_requests", "HTTP requests answered, by route "
                                "template, service id and status code.",
                                ["endpoint", "service", "status"], registry=r)
        self.latency = Histogram("mskcds_http_request_duration_seconds", "Time to answer a "
                                 "request, by service ('' outside the services).",
                                 ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.prefetch = Counter("mskcds_prefetch_keys", "Prefetch keys of service calls by "
                                "where the data came from: prefetch (sent), null (sent as none), "
                                "fhir (fetched) or unavailable.", ["service", "key", "source"],
                                registry=r)
        self.fetches = Counter("mskcds_fhir_fetches", "HTTP requests to a FHIR server by "
                               "outcome.", ["outcome"], registry=r)
        self.fetch_latency = Histogram("mskcds_fhir_fetch_duration_seconds", "Duration of one "
                                       "HTTP request to a FHIR server.", buckets=FETCH_BUCKETS,
                                       registry=r)
        self.unavailable = Counter("mskcds_prefetch_unavailable", "412 answers, once per "
                                   "distinct reason in the answer.", ["reason"], registry=r)
        self.auth = Counter("mskcds_auth_rejections", "Requests refused by authentication, by "
                            "reason.", ["reason"], registry=r)
        self.cards = Counter("mskcds_cards_issued", "Cards issued, by finding code and "
                             "indicator.", ["finding", "indicator"], registry=r)
        self.feedback = Counter("mskcds_feedback_items", "Feedback items received, by outcome "
                                "and whether they were stored or were duplicates of stored "
                                "ones.", ["outcome", "result"], registry=r)
        self.rules = Gauge("mskcds_rules_info", "The clinical rules loaded (1 for the loaded "
                           "set): content digest and profiles.",
                           ["digest", "vitamin_d_profile", "sarcopenia_profile"],
                           multiprocess_mode="max", registry=r)

    # ------------------------------------------------------------------ recording
    def request(self, endpoint: str, service: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, service, str(status)).inc()
        self.latency.labels(service).observe(seconds)

    def prefetch_sources(self, service: str, sources: Mapping[str, str]) -> None:
        for key, source in sources.items():
            self.prefetch.labels(service, key, source).inc()

    def fhir_fetch(self, outcome: str, seconds: float) -> None:
        self.fetches.labels(outcome).inc()
        self.fetch_latency.observe(seconds)

    def precondition_failed(self, reasons: Iterable[str]) -> None:
        for reason in sorted(set(reasons)):
            self.unavailable.labels(reason).inc()

    def auth_rejected(self, reason: str) -> None:
        self.auth.labels(reason).inc()

    def cards_issued(self, cards: Iterable[Mapping[str, Any]]) -> None:
        for card in cards:
            topic = (card.get("source") or {}).get("topic") or {}
            self.cards.labels(str(topic.get("code") or ""), str(card.get("indicator") or "")).inc()

    def feedback_items(self, outcome: str, stored: int, duplicates: int) -> None:
        if stored:
            self.feedback.labels(outcome, "stored").inc(stored)
        if duplicates:
            self.feedback.labels(outcome, "duplicate").inc(duplicates)

    def rules_loaded(self, digest: str, vitamin_d_profile: str, sarcopenia_profile: str) -> None:
        self.rules.labels(digest, vitamin_d_profile, sarcopenia_profile).set(1)

    # ------------------------------------------------------------------ exposition
    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_METRICS: Metrics | None = None
_LOCK = threading.Lock()


def get() -> Metrics:
    global _METRICS
    if _METRICS is None:
        with _LOCK:
            if _METRICS is None:
                _METRICS = Metrics()
    return _METRICS
