"""Around every request: a request id and timer, CORS (with the preflight), the headers
every answer carries, and the one JSON request log line (no patient data, no tokens)."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request

from cds import logs, metrics
from cds.http.state import state
from cds.ids import new_id


def _start() -> Response | None:
    g.start = time.perf_counter()
    g.log = {"request_id": new_id()}
    if request.method == "OPTIONS":
        return _preflight()
    return None


def _preflight() -> Response:
    resp = Response(status=204)
    del resp.headers["Content-Type"]  # no content, so no type (Flask's default: text/html)
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "Authorization, Content-Type")
    resp.headers["Access-Control-Max-Age"] = "600"
    return resp


def _finish(resp: Response) -> Response:
    cors_origins = state().config.cors_origins
    origin = request.headers.get("Origin")
    if "*" in cors_origins:
        resp.headers["Access-Control-Allow-Origin"] = "*"
    elif origin and origin in cors_origins:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
    resp.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    elapsed = time.perf_counter() - g.get("start", time.perf_counter())
    route = request.url_rule.rule if request.url_rule else "<unmatched>"
    fields = g.get("log", {})
    # Labels: the route template and a known service id only (never the path as sent).
    metrics.get().request(route, fields.get("service", ""), resp.status_code, elapsed)
    logs.request_line(method=request.method, path_template=route,
                      status=resp.status_code, latency_ms=round(elapsed * 1000, 2), **fields)
    return resp


def register(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
