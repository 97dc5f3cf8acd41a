"""Every error leaves as a JSON OperationOutcome.

A ``ServiceError`` carries its own status and issues; werkzeug's 404/405/413/415 get
ours in their place; any other fault of ours is a 500 with a generic body, the
exception's type in the log and no stack trace (nor request data) anywhere.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from cds import metrics
from cds.errors import (Issue, MethodNotAllowed, NotFound, PayloadTooLarge, ServiceError,
                        Unauthorized, UnsupportedMediaType, operation_outcome)
from cds.http.body import json_response
from cds.http.state import state

log = logging.getLogger("mskcds.http")

_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge, 415: UnsupportedMediaType}


def _service_error(exc: ServiceError) -> Response:
    if isinstance(exc, Unauthorized):
        metrics.get().auth_rejected(metrics.auth_reason(exc.reason))
        log.warning("authentication failed: %s", exc.reason,
                    extra={"fields": {"request_id": g.get("log", {}).get("request_id")}})
    return json_response(exc.body(), exc.status, exc.headers)


def _http_message(status: int) -> str:
    return {404: f"No such endpoint: {request.path}",
            405: f"Method {request.method} is not allowed on {request.path}.",
            413: f"Request body is larger than {state().config.max_body_bytes} bytes.",
            415: "Content-Type must be application/json."}[status]


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    err_cls = _HTTP_ERRORS.get(status)
    if err_cls is not None:
        err = err_cls(_http_message(status))
        headers = {}
        valid_methods = getattr(exc, "valid_methods", None)
        if status == 405 and valid_methods:
            headers["Allow"] = ", ".join(valid_methods)
        return json_response(err.body(), status, headers)
    if status >= 500 or status < 400:
        # Not the client's fault (werkzeug's InternalServerError and the like): the same
        # generic 500 as any other fault of ours, never werkzeug's text.
        return _unexpected(exc)
    body = operation_outcome([Issue(exc.description or exc.name, code="invalid")])
    return json_response(body, status)


def _unexpected(exc: Exception) -> Response:
    # Our bug, not the client's: log the type (no request data), answer without a trace.
    log.error("internal error: %s", exc.__class__.__name__,
              exc_info=state().config.log_level == "DEBUG")
    return json_response(operation_outcome([Issue("Internal error in the CDS service.",
                                                  code="exception", severity="fatal")]), 500)


def register(app: Flask) -> None:
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
