"""Operating the service: ``GET /metrics`` (Prometheus), ``GET /readyz`` (readiness) and
``GET /openapi.json`` (the machine-readable API description).

``/healthz`` (cds.http.health) stays a liveness check: the process answers. ``/readyz``
answers 503 while something a call needs is unusable (rules, database, replay cache), so a
load balancer sends no traffic there. ``/metrics`` is for the operator's scraper only:
clients whose address is in ``MSKCDS_METRICS_ALLOW`` (default: this machine); everyone
else gets the same 404 as for an unknown path.
"""
from __future__ import annotations

import ipaddress
import threading
import time
from typing import Any

from flask import Blueprint, Response, current_app, request

from cds import metrics
from cds.errors import Issue, NotFound, ServiceUnavailable
from cds.http.body import json_response
from cds.http.state import state

blueprint = Blueprint("ops", __name__)

READY_CHECK_TIMEOUT = 2.0   # seconds for one dependency check
READY_CACHE_SECONDS = 1.0   # a probe storm costs one check per second per worker


# --------------------------------------------------------------------------- /metrics
def metrics_allowed(remote_addr: str | None, allow: tuple[str, ...],
                    forwarded: bool) -> bool:
    """May this client read /metrics? ``allow``: CIDR networks, or ``any`` / ``none``.

    A request relayed by a proxy (Forwarded / X-Forwarded-For) is judged by nothing but
    ``any``: behind a proxy on this machine every client would look local."""
    if "any" in allow:
        return True
    if "none" in allow or forwarded or not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)


@blueprint.get("/metrics")
def metrics_endpoint() -> Response:
    cfg = state().config
    forwarded = "Forwarded" in request.headers or "X-Forwarded-For" in request.headers
    if not metrics_allowed(request.remote_addr, cfg.metrics_allow, forwarded):
        raise NotFound(f"No such endpoint: {request.path}")
    body, content_type = metrics.get().exposition()
    return Response(body, status=200, content_type=content_type)


# --------------------------------------------------------------------------- /readyz
_ready_lock = threading.Lock()
_ready_cache: dict[int, tuple[float, dict[str, str]]] = {}


def _check(name: str, probe: Any) -> str:
    """``ok``, or why not (the exception's type; never its text, which may hold a URL)."""
    outcome: dict[str, str] = {}

    def run() -> None:
        try:
            probe()
            outcome[name] = "ok"
        except Exception as exc:  # any failure means: not ready
            outcome[name] = f"unavailable ({exc.__class__.__name__})"

    worker = threading.Thread(target=run, name=f"mskcds-ready-{name}", daemon=True)
    worker.start()
    worker.join(READY_CHECK_TIMEOUT)
    return outcome.get(name, f"unavailable (no answer in {READY_CHECK_TIMEOUT:g} s)")


def readiness() -> dict[str, str]:
    st = state()
    key = id(current_app)
    with _ready_lock:
        cached = _ready_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < READY_CACHE_SECONDS:
            return cached[1]
        checks = {"rules": _check("rules", lambda: st.engine.rules_ready()),
                  "database": _check("database", st.store.ping)}
        replay = getattr(st.auth, "replay", None)
        if replay is not None and hasattr(replay, "ping"):
            checks["replay_cache"] = _check("replay_cache", replay.ping)
        _ready_cache[key] = (time.monotonic(), checks)
        return checks


@blueprint.get("/readyz")
def readyz() -> Response:
    checks = readiness()
    failing = {name: why for name, why in checks.items() if why != "ok"}
    if failing:
        raise ServiceUnavailable([Issue(f"{name}: {why}", code="transient")
                                  for name, why in failing.items()])
    return json_response({"status": "ready", "checks": checks})


# --------------------------------------------------------------------------- /openapi.json
@blueprint.get("/openapi.json")
def openapi_document() -> Response:
    return json_response(state().openapi)
