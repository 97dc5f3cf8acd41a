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
        from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram,
                                       disable_created_metrics)

        disable_created_metrics()  # *_created series: noise on a dashboard

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

    def prefetch_failed(self, service: str, templates: Iterable[str],
                        unavailable: Mapping[str, str]) -> None:
        """A 412: the keys that could not be had, and each distinct reason once."""
        for key in templates:
            if key in unavailable:
                self.prefetch.labels(service, key, "unavailable").inc()
        self.precondition_failed(unavailable_reason(why) for why in unavailable.values())

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

    def feedback_outcomes(self, outcomes: Iterable[tuple[str, bool]]) -> None:
        """Per feedback item: its outcome, and whether it was stored or a duplicate."""
        for outcome, stored in outcomes:
            self.feedback.labels(outcome, "stored" if stored else "duplicate").inc()

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


# --------------------------------------------------------------------------- reason codes
#: (phrase in the reason text, label). Reasons are sentences written for people (and logs);
#: metric labels need a small fixed set, so each is mapped by its first matching phrase.
_UNAVAILABLE_REASONS = (
    ("not a FHIR server this client may use", "fhir_server_not_allowed"),
    ("no fhirServer", "no_fhir_server"),
    ("cannot be resolved", "template"),
    ("time budget", "timeout"),
    ("did not answer in time", "timeout"),
    ("pages", "too_many_pages"),
    ("could not be reached", "unreachable"),
    ("refused access", "refused"),
    ("404", "not_found"),
    ("answered HTTP", "http_error"),
    ("outside fhirServer", "outside_server"),
    ("not followed", "outside_server"),
    ("redirects", "outside_server"),
    ("too large", "too_large"),
    ("not JSON", "invalid_answer"),
    ("nested too deeply", "invalid_answer"),
    ("could not be parsed", "invalid_answer"),
    ("cannot be parsed", "invalid_answer"),
    ("something other than", "invalid_answer"),
    ("different", "invalid_answer"),
)
_AUTH_REASONS = (
    ("no Authorization header", "missing_token"),
    ("is not 'Bearer", "malformed"),
    ("compact JWS", "malformed"),
    ("longer than", "malformed"),
    ("malformed JWT", "malformed"),
    ("is not a trusted client", "untrusted_issuer"),
    ("jti already used", "replay"),
    ("replay cache", "replay_cache"),
    ("JWKS", "jwks"),
    ("unknown kid", "unknown_key"),
    ("no kid", "header"),
    ("typ", "header"),
    ("crit", "header"),
    ("alg", "algorithm"),
    ("signature does not verify", "signature"),
    ("expired", "expired"),
    ("not valid yet", "not_yet_valid"),
    ("in the future", "not_yet_valid"),
    ("lifetime", "lifetime"),
    ("aud", "audience"),
    ("tenant", "tenant"),
    ("claim", "claims"),
    ("jti", "claims"),
    ("must be", "claims"),
    ("out of range", "claims"),
)


def _classify(text: str, table: tuple[tuple[str, str], ...], default: str) -> str:
    for phrase, label in table:
        if phrase in text:
            return label
    return default


def unavailable_reason(text: str) -> str:
    """A fixed label for why a prefetch key (or one FHIR request) could not be had."""
    return _classify(text, _UNAVAILABLE_REASONS, "fetch_failed")


def auth_reason(text: str) -> str:
    """A fixed label for why authentication refused a call. The issuer named at the start
    of a reason ("iss 'x': ...") is the caller's text: it is cut off before matching."""
    if text.startswith("iss "):
        _, sep, rest = text.partition("': ")
        if not sep:
            _, sep, rest = text.partition('": ')
        text = rest if sep else text
    return _classify(text, _AUTH_REASONS, "other")


_METRICS: Metrics | None = None
_LOCK = threading.Lock()


def get() -> Metrics:
    global _METRICS
    if _METRICS is None:
        with _LOCK:
            if _METRICS is None:
                _METRICS = Metrics()
    return _METRICS
