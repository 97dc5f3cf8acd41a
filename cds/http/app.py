"""The Flask layer: HTTP concerns only (routing, body parsing, CORS, auth, errors, logs).

Clinical work happens in ``cds.engine``; this module turns HTTP into calls on it
and its exceptions into JSON responses. Nothing a client sends may produce a 500:
every error leaves as an OperationOutcome with a 4xx status, and an unexpected
failure of our own becomes a 500 with a generic body and no stack trace.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from typing import Any, Mapping

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from cds import logs
from cds.security.auth import Authenticator
from cds.config import Config
from cds.engine import Engine
from cds.errors import (BadRequest, Issue, MethodNotAllowed, NotFound, PayloadTooLarge,
                     ServiceError, Unauthorized, UnsupportedMediaType, operation_outcome)
from cds.store.storage import open_store

log = logging.getLogger("mskcds.http")

JSON_TYPE = "application/json"


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False),
                    status=status, mimetype=JSON_TYPE)
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259); Python's parser would accept them."""
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999
        raise ValueError("number out of range")
    return value


#: A \uD800-\uDFFF escape: the only way a JSON text can carry an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(doc: Any) -> bool:
    """Does any string (key or value) hold an unpaired surrogate? Python's parser accepts
    "\\ud800", but such a string cannot be encoded as UTF-8: echoed in an error, stored
    or logged it raised UnicodeEncodeError (RFC 8259 8.2: behaviour unpredictable)."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: Any = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for value in strings:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def create_app(config: Mapping[str, Any] | Config | None = None) -> Flask:
    """App factory. ``config``: a Config, or a mapping overriding MSKCDS_* settings."""
    cfg = config if isinstance(config, Config) else Config.from_env(config)
    logs.configure(cfg.log_level)
    app = Flask("mskcds")
    # One byte over the limit: werkzeug stops a body without Content-Length (chunked) at
    # MAX_CONTENT_LENGTH *silently*; reading limit+1 bytes lets read_json see it is too big.
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = Engine(cfg)
    authenticator = Authenticator(cfg)
    store = open_store(cfg)
    app.extensions["mskcds"] = {"config": cfg, "engine": engine, "auth": authenticator,
                                "store": store}
    if not cfg.require_auth:
        log.warning("AUTHENTICATION IS OFF (MSKCDS_REQUIRE_AUTH=false): any caller is trusted. "
                    "For local use only; never deploy like this.")

    # ----------------------------------------------------------------- helpers
    def endpoint_url() -> str:
        base = cfg.public_base_url.rstrip("/") if cfg.public_base_url else request.host_url.rstrip("/")
        return base + request.path

    def read_json() -> Any:
        mimetype = (request.mimetype or "").lower()
        if mimetype != JSON_TYPE and not mimetype.endswith("+json"):
            raise UnsupportedMediaType(Issue(
                f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}.",
                code="not-supported"))
        coding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
        if coding not in ("", "identity"):
            # RFC 9110 15.5.16: an unsupported content coding is 415 (not a 400 on the bytes).
            raise UnsupportedMediaType(Issue(
                f"Content-Encoding {coding[:40]!r} is not supported: send the body uncompressed.",
                code="not-supported"), headers={"Accept-Encoding": "identity"})
        length = request.content_length
        if length is not None and length > cfg.max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than {cfg.max_body_bytes} bytes.")
        raw = request.get_data(cache=False)
        if len(raw) > cfg.max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than {cfg.max_body_bytes} bytes.")
        try:
            text = raw.decode("utf-8")
            doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"Request body is not valid JSON: {exc.__class__.__name__}.") from None
        except RecursionError:
            raise BadRequest("Request body is nested too deeply.") from None
        if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(doc):
            raise BadRequest("Request body is not valid JSON: a string holds an unpaired UTF-16 "
                             "surrogate escape (\\ud800-\\udfff), which is no character.")
        return doc

    def authenticate(service_id: str | None = None):
        # The request line names a (known) service even when authentication refuses the call.
        if service_id is not None and service_id in engine.services:
            g.log["service"] = service_id
        return authenticator.authenticate(endpoint_url(), request.headers.get("Authorization"))

    # ----------------------------------------------------------------- hooks
    @app.before_request
    def _start() -> Response | None:
        g.start = time.perf_counter()
        g.log = {"request_id": str(uuid.uuid4())}
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

    @app.after_request
    def _finish(resp: Response) -> Response:
        origin = request.headers.get("Origin")
        if "*" in cfg.cors_origins:
            resp.headers["Access-Control-Allow-Origin"] = "*"
        elif origin and origin in cfg.cors_origins:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
        resp.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        elapsed_ms = (time.perf_counter() - g.get("start", time.perf_counter())) * 1000
        logs.request_line(method=request.method, path_template=request.url_rule.rule
                          if request.url_rule else "<unmatched>",
                          status=resp.status_code, latency_ms=round(elapsed_ms, 2),
                          **g.get("log", {}))
        return resp

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if isinstance(exc, Unauthorized):
            log.warning("authentication failed: %s", exc.reason,
                        extra={"fields": {"request_id": g.get("log", {}).get("request_id")}})
        return json_response(exc.body(), exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        mapping = {404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}
        err_cls = mapping.get(status)
        if err_cls is not None:
            message = {404: f"No such endpoint: {request.path}",
                       405: f"Method {request.method} is not allowed on {request.path}.",
                       413: f"Request body is larger than {cfg.max_body_bytes} bytes.",
                       415: "Content-Type must be application/json."}[status]
            err = err_cls(message)
            headers = {}
            if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
                headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
            return json_response(err.body(), status, headers)
        if status >= 500 or status < 400:
            # Not the client's fault (werkzeug's InternalServerError and the like): the same
            # generic 500 as any other fault of ours, never werkzeug's text.
            return _unexpected(exc)
        body = operation_outcome([Issue(exc.description or exc.name, code="invalid")])
        return json_response(body, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Our bug, not the client's: log the type (no request data), answer without a trace.
        log.error("internal error: %s", exc.__class__.__name__, exc_info=cfg.log_level == "DEBUG")
        return json_response(operation_outcome([Issue("Internal error in the CDS service.",
                                                      code="exception", severity="fatal")]), 500)

    # ----------------------------------------------------------------- routes
    @app.get("/healthz")
    def healthz() -> Response:
        return json_response({"status": "ok", "services": list(engine.services)})

    @app.get("/cds-services")
    def discovery() -> Response:
        authenticate()
        return json_response(engine.discovery())

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str) -> Response:
        client = authenticate(service_id)
        engine.service(service_id)  # 404 before reading the body
        g.log.update(service=service_id)
        payload = read_json()
        if isinstance(payload, dict) and isinstance(payload.get("hook"), str):
            g.log["hook"] = payload["hook"][:40]
        allowed = client.fhir_servers if client is not None else cfg.allowed_fhir_servers
        result = engine.call(service_id, payload, allowed_fhir_servers=allowed)
        store.record_issued(result.service_id, result.hook, result.hook_instance,
                            result.response["cards"])
        g.log["cards"] = len(result.response["cards"])
        return json_response(result.response)

    @app.post("/cds-services/<service_id>/feedback")
    def feedback(service_id: str) -> Response:
        authenticate(service_id)
        engine.service(service_id)
        g.log.update(service=service_id)
        payload = read_json()
        stored = store.record_feedback(service_id, payload)
        g.log["feedback_items"] = stored
        return json_response({"stored": stored}, 200)

    @app.get("/admin/feedback-summary")
    def feedback_summary() -> Response:
        if not cfg.admin_summary_enabled:
            raise NotFound("The feedback summary is disabled (MSKCDS_ADMIN_SUMMARY_ENABLED).")
        authenticate()
        return json_response(store.summary(request.args.get("from"), request.args.get("to")))

    return app
