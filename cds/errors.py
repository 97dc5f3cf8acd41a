"""Errors a client can cause, and the JSON body each one gets.

Every error the service returns is a FHIR OperationOutcome with one issue per
problem; ``expression`` names the offending field of the request (dotted path,
``[n]`` for list items), so an integrator can see exactly what to fix.
Nothing here knows about Flask: the HTTP layer maps ``status`` onto the response.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class Issue:
    diagnostics: str
    expression: str | None = None
    code: str = "invalid"  # FHIR issue-type code
    severity: str = "error"

    def as_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code,
                               "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}


class ServiceError(Exception):
    """Base class: an error with an HTTP status and OperationOutcome issues."""

    status = 400
    issue_code = "invalid"

    def __init__(self, issues: str | Issue | Iterable[Issue], *,
                 headers: Mapping[str, str] | None = None):
        if isinstance(issues, str):
            issues = [Issue(issues, code=self.issue_code)]
        elif isinstance(issues, Issue):
            issues = [issues]
        self.issues: list[Issue] = list(issues)
        self.headers = dict(headers or {})
        super().__init__("; ".join(i.diagnostics for i in self.issues))

    def body(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    """Authentication failed. The body says only that; the reason is logged."""

    status = 401
    issue_code = "login"

    def __init__(self, reason: str = "authentication failed"):
        # The reason is kept for the log, never sent to the client.
        self.reason = reason
        super().__init__(Issue("Authentication failed.", code="login"),
                         headers={"WWW-Authenticate": 'Bearer realm="mskcds"'})


class Forbidden(ServiceError):
    status = 403
    issue_code = "forbidden"


class NotFound(ServiceError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(ServiceError):
    status = 405
    issue_code = "not-supported"


class PayloadTooLarge(ServiceError):
    status = 413
    issue_code = "too-long"


class UnsupportedMediaType(ServiceError):
    status = 415
    issue_code = "not-supported"


class PrefetchUnavailable(ServiceError):
    """Data the service needs could not be had (CDS Hooks 2.0: 412)."""

    status = 412
    issue_code = "incomplete"

    def __init__(self, keys: Mapping[str, str]):
        """``keys`` maps each prefetch key that could not be satisfied to why."""
        self.keys = dict(keys)
        super().__init__([
            Issue(f"Prefetch key {key!r} was not supplied and could not be fetched: {why}",
                  expression=f"prefetch.{key}", code="incomplete")
            for key, why in sorted(self.keys.items())
        ])


def flatten_errors(messages: Any, prefix: str = "") -> list[Issue]:
    """marshmallow's nested ``messages`` → one Issue per leaf, with a dotted path."""
    issues: list[Issue] = []
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if key == "_schema":
                path = prefix
            elif isinstance(key, int):
                path = f"{prefix}[{key}]"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            issues.extend(flatten_errors(value, path))
    elif isinstance(messages, (list, tuple)):
        if all(isinstance(m, str) for m in messages):
            for m in messages:
                issues.append(Issue(f"{prefix}: {m}" if prefix else m, expression=prefix or None))
        else:
            for m in messages:
                issues.extend(flatten_errors(m, prefix))
    else:
        issues.append(Issue(f"{prefix}: {messages}" if prefix else str(messages),
                            expression=prefix or None))
    return issues


#: Seconds a client is asked to wait (``Retry-After``) when a store is down.
RETRY_AFTER_SECONDS = 5


class ServiceUnavailable(ServiceError):
    """A store the service needs (replay cache, database) cannot answer: 503, retry later.

    Never a 401: an EHR reads 401 as bad credentials. The call is still refused.
    """

    status = 503
    issue_code = "transient"

    def __init__(self, issues: str | Issue | Iterable[Issue] =
                 "The service is temporarily unavailable; retry later.", *,
                 retry_after: int = RETRY_AFTER_SECONDS):
        super().__init__(issues, headers={"Retry-After": str(retry_after)})
