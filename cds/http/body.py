"""Request bodies in, JSON bodies out.

A body is read only as JSON (``application/json`` or ``+json``), uncompressed, within
``MSKCDS_MAX_BODY_BYTES``, strictly: NaN and Infinity, numbers out of range, unpaired
surrogate escapes and deep nesting are each a 4xx naming the problem, never a 500.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from flask import Response, request

from cds.errors import BadRequest, Issue, PayloadTooLarge, UnsupportedMediaType

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


def read_json(max_body_bytes: int) -> Any:
    """The current request's body as a JSON document; a 4xx ServiceError when it is not one."""
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
    if length is not None and length > max_body_bytes:
        raise PayloadTooLarge(f"Request body is larger than {max_body_bytes} bytes.")
    raw = request.get_data(cache=False)
    if len(raw) > max_body_bytes:
        raise PayloadTooLarge(f"Request body is larger than {max_body_bytes} bytes.")
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
