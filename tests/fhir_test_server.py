"""A small real FHIR R4 server for tests (threaded ``http.server`` on 127.0.0.1, a free port).

It implements what the service asks a FHIR server for, and records every request:

* ``GET {base}/Patient/<id>`` (read; 404 OperationOutcome when unknown);
* ``GET {base}/<Type>?patient=..&code=..&_sort=-date&_count=N`` for Observation,
  Condition, MedicationRequest (and any other loaded type): ``patient`` (``id`` or
  ``Patient/id``), ``subject``, ``code``/``category`` as ``system|code``, ``|code``
  or ``code`` with comma = OR, ``date``/``authoredon`` with ge/gt/le/lt/eq prefixes,
  ``_sort`` (``date``/``-date``), ``_count``, and paging through ``next`` links
  (``_offset``). Unknown parameters are ignored (as lenient servers do) and recorded.
* a bearer-token check (``token``; 401 on a missing or wrong token);
* a slow mode (``delay`` seconds before answering), an error mode
  (``fail_status``), and ``override(path, query)`` for odd answers (redirects,
  off-origin ``next`` links, non-JSON, wrong types) in tests.

Use it as a context manager::

    with FhirTestServer() as fhir:
        fhir.load(patient, *observations)
        ... fhir.base_url ... fhir.requests ...
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlencode, urlsplit

FHIR_JSON = "application/fhir+json"

#: resource type → the elements its ``code`` search parameter reads
CODE_PATHS = {
    "Observation": ("code",),
    "Condition": ("code",),
    "MedicationRequest": ("medicationCodeableConcept",),
    "MedicationStatement": ("medicationCodeableConcept",),
    "Procedure": ("code",),
}
#: resource type → the date elements ``date`` and ``_sort=date`` read, first present wins
DATE_PATHS = ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued",
              "onsetDateTime", "recordedDate", "authoredOn", "performedDateTime")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's listen backlog is 5: with more connects at once (the benchmark's
    # fallback: 4 calls x 6 keys) the rest waited for a SYN retry, 1 s later, and the
    # service's connect timeout turned that into a 412. Real FHIR servers queue far more.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout) resets the connection: expected in slow mode.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def resource_type(self) -> str:
        return self.path.rstrip("/").split("/fhir/", 1)[-1].split("/", 1)[0]


def outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _get(resource: dict[str, Any], dotted: str) -> Any:
    value: Any = resource
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _codings(resource: dict[str, Any], element: str) -> list[dict[str, Any]]:
    value = resource.get(element)
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, dict):
            out.extend(c for c in item.get("coding", []) if isinstance(c, dict))
    return out


def _token_match(codings: list[dict[str, Any]], param: str) -> bool:
    for alt in param.split(","):
        if "|" in alt:
            system, code = alt.split("|", 1)
        else:
            system, code = None, alt
        for c in codings:
            if c.get("code") != code:
                continue
            if system is None or (system == "" and not c.get("system")) or c.get("system") == system:
                return True
    return False


def _date_of(resource: dict[str, Any]) -> str:
    for path in DATE_PATHS:
        value = _get(resource, path)
        if isinstance(value, str):
            return value
    return ""


def _date_match(value: str, param: str) -> bool:
    prefix, target = (param[:2], param[2:]) if param[:2] in {"ge", "gt", "le", "lt", "eq"} else ("eq", param)
    if not value:
        return False
    v = value[:len(target)]
    return {"ge": v >= target, "gt": v > target, "le": v <= target, "lt": v < target,
            "eq": v == target}[prefix]


@dataclass
class FhirTestServer:
    token: str | None = None           # expected bearer token (None: open server)
    delay: float = 0.0                 # seconds before each answer (slow mode)
    fail_status: int | None = None     # answer every request with this status (error mode)
    default_count: int = 50
    max_count: int | None = None       # cap on page size, as real servers have (forces paging)
    override: Callable[[str, dict[str, list[str]]], tuple[int, dict[str, str], bytes] | None] | None = None
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    connections: int = 0               # TCP connections accepted (keep-alive reuse shows here)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def start(self) -> "FhirTestServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm the second
            # waited for the client's delayed ACK (~40 ms per answer), which tests and
            # benchmarks then measured as if it were the service's time.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                with server._lock:
                    server.connections += 1
                super().setup()

            def do_GET(self) -> None:  # noqa: N802
                server._handle(self)

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="fhir-test-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FhirTestServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert getattr(self, "_port", None), "server not started"
        return self._port

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + "/fhir"

    def load(self, *resources: dict[str, Any]) -> None:
        with self._lock:
            for r in resources:
                self.resources.setdefault(r["resourceType"], {})[r["id"]] = r

    def reset(self, *, keep_resources: bool = False) -> None:
        with self._lock:
            if not keep_resources:
                self.resources.clear()
            self.requests.clear()
            self.connections = 0
        self.token = None
        self.delay = 0.0
        self.fail_status = None
        self.override = None
        self.max_count = None

    def asked(self, resource_type: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if resource_type is None or r.resource_type == resource_type]

    # ------------------------------------------------------------------ serving
    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any,
              headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        hdrs = {"Content-Type": FHIR_JSON, **(headers or {})}
        for k, v in hdrs.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        try:
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(Recorded("GET", parts.path, query, dict(h.headers.items())))
        if self.delay:
            time.sleep(self.delay)
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, outcome("login", "missing or wrong bearer token"),
                              {"WWW-Authenticate": "Bearer"})
        if self.fail_status is not None:
            return self._send(h, self.fail_status, outcome("exception", "error mode"))
        if self.override is not None:
            special = self.override(parts.path, query)
            if special is not None:
                status, headers, body = special
                return self._send(h, status, body, headers)
        if not parts.path.startswith("/fhir/"):
            return self._send(h, 404, outcome("not-found", "not a FHIR path"))
        segments = [s for s in parts.path[len("/fhir/"):].split("/") if s]
        if len(segments) == 2:
            return self._read(h, *segments)
        if len(segments) == 1:
            return self._search(h, segments[0], query)
        return self._send(h, 400, outcome("not-supported", "unsupported interaction"))

    def _read(self, h: BaseHTTPRequestHandler, rtype: str, rid: str) -> None:
        with self._lock:
            resource = self.resources.get(rtype, {}).get(rid)
        if resource is None:
            return self._send(h, 404, outcome("not-found", f"{rtype}/{rid} is not known"))
        self._send(h, 200, resource)

    def matches(self, rtype: str, resource: dict[str, Any], query: dict[str, list[str]]) -> bool:
        for name, values in query.items():
            for value in values:
                if name in ("patient", "subject"):
                    ref = _get(resource, "subject.reference") or _get(resource, "patient.reference")
                    want = value if "/" in value else f"Patient/{value}"
                    if ref != want:
                        return False
                elif name == "code":
                    paths = CODE_PATHS.get(rtype, ("code",))
                    if not _token_match([c for p in paths for c in _codings(resource, p)], value):
                        return False
                elif name == "category":
                    if not _token_match(_codings(resource, "category"), value):
                        return False
                elif name in ("date", "authoredon", "onset-date"):
                    if not _date_match(_date_of(resource), value):
                        return False
                elif name == "_id":
                    if resource.get("id") not in value.split(","):
                        return False
        return True

    def _search(self, h: BaseHTTPRequestHandler, rtype: str, query: dict[str, list[str]]) -> None:
        with self._lock:
            candidates = list(self.resources.get(rtype, {}).values())
        hits = [r for r in candidates if self.matches(rtype, r, query)]
        sort = (query.get("_sort") or [""])[0]
        if sort in ("date", "-date"):
            hits.sort(key=_date_of, reverse=sort.startswith("-"))
        try:
            count = int((query.get("_count") or [str(self.default_count)])[0])
            offset = int((query.get("_offset") or ["0"])[0])
        except ValueError:
            return self._send(h, 400, outcome("invalid", "bad _count or _offset"))
        count = max(1, min(count, self.max_count or count))
        page = hits[offset:offset + count]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle", "type": "searchset", "total": len(hits),
            "link": [{"relation": "self", "url": self._page_url(rtype, query, offset)}],
            "entry": [{"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in page],
        }
        if offset + count < len(hits):
            bundle["link"].append({"relation": "next",
                                   "url": self._page_url(rtype, query, offset + count)})
        self._send(h, 200, bundle)

    def _page_url(self, rtype: str, query: dict[str, list[str]], offset: int) -> str:
        q = {k: v for k, v in query.items() if k != "_offset"}
        pairs = [(k, v) for k, vs in q.items() for v in vs] + [("_offset", str(offset))]
        return f"{self.base_url}/{rtype}?{urlencode(pairs)}"


def searchset(resources: Iterable[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    """A searchset Bundle (as a client would prefetch it)."""
    items = list(resources)
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                           "entry": [{"resource": r, "search": {"mode": "match"}} for r in items]}
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    return out
