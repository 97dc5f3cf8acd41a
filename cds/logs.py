"""Structured logging: one JSON object per line.

Never log patient identifiers, resource contents, JWTs or access tokens. The
request line carries only method, route template, service id, hook, status,
latency, counts and a random request id.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

_CONFIGURED = False

# Safety net, not the primary control (nothing should log a token in the first place):
# anything shaped like a compact JWS/JWT is replaced before a line is written.
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
REDACTED = "[redacted-jwt]"


def redact(text: str) -> str:
    return _JWT_RE.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return redact(json.dumps(out, separators=(",", ":"), default=str))


def configure(level: str = "INFO") -> None:
    global _CONFIGURED
    root = logging.getLogger("mskcds")
    root.setLevel(level.upper())
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.propagate = False
    # Libraries that could echo URLs (with search parameters such as a patient id) or
    # request lines: warnings only. gunicorn's access log is off unless asked for.
    for name in ("werkzeug", "urllib3", "requests"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _CONFIGURED = True


def request_line(**fields: Any) -> None:
    logging.getLogger("mskcds.access").info("request", extra={"fields": fields})
