"""Prefetch and FHIR-server fallback: turn a hook request into the FHIR resources the service needs.

For every prefetch key the service declares (its *templates*):

* the client sent a resource or a searchset Bundle → use it (a Bundle with a ``next``
  link is read to the end, on the client's FHIR server only);
* the client sent ``null`` → the client says there is no data; nothing is fetched;
* the client sent an OperationOutcome, a resource of the wrong type, or nothing at all
  → the template is rendered and fetched from ``fhirServer`` with the
  ``fhirAuthorization`` bearer token (CDS Hooks 2.0, "Prefetch" and "FHIR Resource Access").

Independent fetches run concurrently (up to ``MSKCDS_FHIR_MAX_WORKERS`` per call, on the
process's reused fetch threads), every HTTP call has connect/read timeouts, and the whole
gathering step has one time budget and one byte budget (``MSKCDS_FHIR_TOTAL_BUDGET``,
``MSKCDS_FHIR_MAX_CALL_BYTES``: all keys and pages of one call together). Connections to a
FHIR server are kept alive and reused by the process's later calls (no TCP or TLS handshake
per key per call); when a call's time budget ends, the sockets its fetches are still using
are shut down and never pooled again, so its fetch threads return at once (a drip-feeding
server cannot pile up threads or sockets). Anything
that cannot be had (no fhirServer, an unresolvable template token, an error or
timeout, a wrong answer) makes the call fail with 412 (``PrefetchUnavailable``)
naming the keys; the service never answers on part of the data.

Security rules kept here: no request ever leaves for a URL outside the
``fhirServer`` base (same scheme, host, port and path prefix) — not a redirect,
not a ``next`` link; the token is sent only there, never logged, never stored
beyond the call. Nothing here logs URLs (they carry the patient id).
"""
from __future__ import annotations

import concurrent.futures as cf
import http.cookiejar
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from cds import metrics
from cds.config import Config
from cds.errors import PrefetchUnavailable
from cds.urls import base_url

log = logging.getLogger("mskcds.gather")

TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
FHIR_JSON = "application/fhir+json"
#: An answer larger than this is not read to the end (protects the worker's memory).
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 3
#: ``{{userXxxId}}`` tokens: the resource type ``context.userId`` must name.
USER_TOKENS = {"userPractitionerId": "Practitioner", "userPractitionerRoleId": "PractitionerRole",
               "userPatientId": "Patient", "userRelatedPersonId": "RelatedPerson"}


class Unavailable(Exception):
    """One key cannot be satisfied; the message (never a URL or token) says why."""


@dataclass
class Gathered:
    """The resources per prefetch key, and where each key's data came from."""

    by_key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: key → "prefetch" (sent by the client), "null" (client said: no data) or "fhir" (fetched)
    source: dict[str, str] = field(default_factory=dict)

    def resources(self) -> list[dict[str, Any]]:
        return [r for items in self.by_key.values() for r in items]


# --------------------------------------------------------------------------- session
class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A shared session must not carry one client's cookies into another's call."""

    def set_ok(self, cookie: Any, request: Any) -> bool:  # pragma: no cover - trivial
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:  # pragma: no cover - trivial
        return False


class Lease:
    """One call's hold on the process's pooled connections: the connections (and their
    sockets) its fetches are using right now, so that ``abort`` at the end of its budget shuts
    exactly those, and a connection it gives back afterwards is closed, never reused. A
    connection given back in time goes back to the pool for the next call (keep-alive: no new
    TCP or TLS handshake per key per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: set[Any] = set()
        self._socks: set[socket.socket] = set()
        self.aborted = False

    def hold(self, conn: Any) -> None:
        with self._lock:
            self._conns.add(conn)
            if conn.sock is not None:   # a pooled connection, already open
                self._socks.add(conn.sock)

    def track(self, sock: socket.socket) -> None:
        """A socket opened for one of this call's connections (shut at once after abort)."""
        with self._lock:
            self._socks.add(sock)
            aborted = self.aborted
        if aborted:
            _shut(sock)

    def let_go(self, conn: Any) -> bool:
        """``conn`` is given back; False: the call was aborted, close it instead of pooling it."""
        with self._lock:
            self._conns.discard(conn)
            self._socks.discard(conn.sock)
            return not self.aborted

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            socks = self._socks | {c.sock for c in self._conns if c.sock is not None}
        for sock in socks:
            _shut(sock)


_leases = threading.local()   # the Lease of the call whose fetch this thread is running


def _current_lease() -> Lease | None:
    return getattr(_leases, "lease", None)


def _leased(lease: Lease, fn: Any, *args: Any) -> Any:
    """Run one of a call's fetches (on a fetch thread) under that call's lease."""
    _leases.lease = lease
    try:
        return fn(*args)
    finally:
        _leases.lease = None


class _LeasedConnections:
    """Pool side: a connection checked out or given back is entered in, or taken out of, the
    lease of the call running on this thread (none: a session used outside gather)."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        lease = _current_lease()
        if lease is not None:
            lease.hold(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        lease = _current_lease()
        if conn is not None and lease is not None and not lease.let_go(conn):
            conn.close()
            conn = None
        super()._put_conn(conn)  # type: ignore[misc]


class _LeasedSockets:
    """Connection side: a socket opened is entered in the lease of the call on this thread."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        lease = _current_lease()
        if lease is not None:
            lease.track(sock)
        return sock


class _PlainConnection(_LeasedSockets, HTTPConnection):
    pass


class _TlsConnection(_LeasedSockets, HTTPSConnection):
    pass


class _PlainPool(_LeasedConnections, HTTPConnectionPool):
    ConnectionCls = _PlainConnection


class _TlsPool(_LeasedConnections, HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


class _LeasedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PlainPool, "https": _TlsPool}


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def make_session(config: Config) -> requests.Session:
    """A pooled session: no cookies, no retries by urllib3 (``_Fetcher`` sends a GET again
    once, only when its connection failed before any answer), nothing from the environment
    (proxies, .netrc credentials). Connections are kept alive per FHIR server origin and
    shared by the process's calls (each request carries its own call's token; a session
    holds none); ``gather`` uses one per process (``shared_session``)."""
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(_NoCookies())
    threads = max(1, config.fhir_max_workers) * POOL_THREADS_PER_CALL_SLOT
    adapter = _LeasedAdapter(pool_connections=32, pool_maxsize=threads, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# This process's session and fetch threads, made on first use. A forked child starts without
# them: the parent's threads are not there, and its sockets must not be shared.
_lazy_lock = threading.Lock()
_session: requests.Session | None = None
_pool: cf.ThreadPoolExecutor | None = None


def _after_fork_in_child() -> None:
    global _lazy_lock, _session, _pool
    _lazy_lock, _session, _pool = threading.Lock(), None, None


os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_session(config: Config) -> requests.Session:
    """This process's session (its connections kept alive across calls); made again in a
    forked child, whose parent's sockets it must not share."""
    global _session
    with _lazy_lock:
        if _session is None:
            _session = make_session(config)
        return _session


# --------------------------------------------------------------------------- fetch threads
#: Fetch threads a process may hold, as a multiple of ``fhir_max_workers`` (fetches per call).
POOL_THREADS_PER_CALL_SLOT = 16

#: How long a call whose budget ran out waits for its fetches to return once their sockets
#: are shut (they return within milliseconds; a thread stuck elsewhere is not waited for).
STRAGGLER_WAIT = 0.25


def fetch_pool(config: Config) -> cf.ThreadPoolExecutor:
    """This process's fetch threads, shared by its calls. A call that started its own threads
    waited 1-6 ms for each (``Thread.start`` returns once the new thread holds the GIL), six
    per fallback call. Here an idle thread is reused, and a new one starts only when every
    thread is busy, up to ``fhir_max_workers`` x 16: threads held by unresponsive servers
    (shut down when their call's budget ends) leave the others free short of that. Made again
    in a forked child (the parent's threads are not there)."""
    global _pool
    with _lazy_lock:
        if _pool is None:
            size = max(1, config.fhir_max_workers) * POOL_THREADS_PER_CALL_SLOT
            _pool = cf.ThreadPoolExecutor(max_workers=size, thread_name_prefix="mskcds-fhir")
        return _pool


# --------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Template:
    key: str
    text: str

    @property
    def resource_type(self) -> str:
        return re.split(r"[/?]", self.text, maxsplit=1)[0]

    @property
    def is_read(self) -> bool:
        """``Type/{{id}}`` (a read) rather than ``Type?params`` (a search)."""
        return "?" not in self.text and "/" in self.text


def _token_value(token: str, context: Mapping[str, Any]) -> str | None:
    if token.startswith("context."):
        value = context.get(token[len("context."):])
        if isinstance(value, str) and value:
            return quote(value, safe="")
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return ",".join(quote(v, safe="") for v in value)
        return None
    if token in USER_TOKENS:
        user = context.get("userId")
        prefix = USER_TOKENS[token] + "/"
        if isinstance(user, str) and user.startswith(prefix) and len(user) > len(prefix):
            return quote(user[len(prefix):], safe="")
        return None
    return None


def with_page_size(search: str, count: int) -> str:
    """``search`` asking for pages of ``count`` entries (``_count`` replaced or added).

    An EHR's own prefetch follows the template as advertised; when the service fetches
    a search itself it asks for large pages, so a long history arrives in a few round
    trips instead of many (MSKCDS_FHIR_PAGE_SIZE)."""
    path, sep, query = search.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("_count=")] if sep else []
    params.append(f"_count={count}")
    return f"{path}?{'&'.join(params)}"


def render(template: str, context: Mapping[str, Any]) -> str:
    """Replace the CDS Hooks 2.0 prefetch tokens; values are URL-encoded.

    Raises Unavailable when a token cannot be resolved from the context.
    """
    def sub(match: re.Match[str]) -> str:
        value = _token_value(match.group(1), context)
        if value is None:
            raise Unavailable(f"the prefetch template token {{{{{match.group(1)}}}}} "
                              f"cannot be resolved from this request's context")
        return value

    return TOKEN.sub(sub, template)


# --------------------------------------------------------------------------- origin rules
def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def within_base(url: str, base: str) -> bool:
    """True when ``url`` is on the FHIR server ``base``: same scheme, host and port,
    and its path at or under the base path."""
    # No credentials in the URL, no backslashes or whitespace: parsers disagree on them.
    if any(c in url for c in "\\ \t\r\n") or any(ord(c) < 32 for c in url):
        return False
    try:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            return False
        if _origin(url) != _origin(base):
            return False
        path = parts.path
    except ValueError:
        return False
    base_path = urlsplit(base).path.rstrip("/")
    # Dot segments, also percent-encoded ("%2e%2e", RFC 3986 2.3: the same as "..") or
    # with a path parameter ("..;x", which servlet containers read as ".."): a server
    # that decodes and normalises them would serve a path outside the base.
    segments = unquote(path).replace("\\", "/").split("/")
    if any(seg.split(";", 1)[0] in (".", "..") for seg in segments):
        return False
    return path == base_path or path.startswith(base_path + "/")


def _join(base: str, reference: str) -> str:
    """``urljoin``, with a URL it cannot parse (``http://[bad``: ValueError) refused as a
    reason for 412 rather than falling through to the internal-error path."""
    try:
        return urljoin(base, reference)
    except ValueError:
        raise Unavailable("the FHIR server gave a URL that cannot be parsed; not followed") from None


# --------------------------------------------------------------------------- content rules
def bundle_resources(bundle: Mapping[str, Any], expected_type: str | None) -> list[dict[str, Any]]:
    """Resources of a searchset Bundle: entries without a resource are dropped,
    ``search.mode: outcome`` entries dropped, ``include`` entries kept; ``match``
    entries (or unmarked ones) must be ``expected_type`` (others are dropped)."""
    out: list[dict[str, Any]] = []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return out
    for entry in entries:
        # dict first: what the JSON parser gives, ~10x cheaper to test than the Mapping ABC
        if type(entry) is not dict and not isinstance(entry, Mapping):
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        search = entry.get("search")
        mode = None if search is None else \
            search.get("mode") if isinstance(search, Mapping) else None
        if mode == "outcome":
            continue
        if mode == "include":
            out.append(resource)
            continue
        if expected_type is None or resource["resourceType"] == expected_type:
            out.append(resource)
    return out


def next_link(bundle: Mapping[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, Mapping) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url.strip():
                return url.strip()
    return None


# --------------------------------------------------------------------------- fetching
class _Fetcher:
    """HTTP GETs against one request's fhirServer, within one deadline."""

    def __init__(self, base: str, token: str | None, config: Config,
                 session: requests.Session, deadline: float):
        self._bytes_left = config.fhir_max_call_bytes
        self._bytes_lock = threading.Lock()
        self.base = base_url(base)
        self._headers = {"Accept": FHIR_JSON}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.config = config
        self.session = session
        self.deadline = deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def get_json(self, url: str) -> Any:
        """The JSON at ``url`` (redirects within the base followed); counted in the metrics
        by outcome (``ok`` or the kind of failure) and duration."""
        started = time.monotonic()
        try:
            doc = self._get_json(url)
        except Unavailable as exc:
            metrics.get().fhir_fetch(metrics.unavailable_reason(str(exc)),
                                     time.monotonic() - started)
            raise
        metrics.get().fhir_fetch("ok", time.monotonic() - started)
        return doc

    def _get_json(self, url: str) -> Any:
        for _ in range(MAX_REDIRECTS + 1):
            if not within_base(url, self.base):
                raise Unavailable("a URL outside fhirServer was not followed")
            left = self.remaining()
            if left <= 0:
                raise Unavailable("the time budget for the FHIR server ran out")
            try:
                resp = self._send(url)
            except requests.Timeout:
                raise Unavailable("the FHIR server did not answer in time") from None
            except requests.RequestException as exc:
                raise Unavailable(f"the FHIR server could not be reached "
                                  f"({exc.__class__.__name__})") from None
            except ValueError:
                # Even with allow_redirects=False, requests parses a Location header to
                # offer resp.next, and raises ValueError on one like "http://[::1/x".
                raise Unavailable("the request to the FHIR server or its answer could not "
                                  "be parsed (e.g. a malformed Location header)") from None
            try:
                if resp.is_redirect:
                    location = resp.headers.get("Location", "")
                    url = _join(url, location)
                    if not within_base(url, self.base):
                        raise Unavailable("the FHIR server redirected outside fhirServer; "
                                          "the redirect was not followed")
                    continue
                if resp.status_code == 404:
                    raise Unavailable("the FHIR server answered 404 (not found)")
                if resp.status_code in (401, 403):
                    raise Unavailable(f"the FHIR server refused access ({resp.status_code})")
                if resp.status_code != 200:
                    raise Unavailable(f"the FHIR server answered HTTP {resp.status_code}")
                body = self._read(resp)
            finally:
                resp.close()
            try:
                return json.loads(body)
            except ValueError:
                raise Unavailable("the FHIR server's answer is not JSON") from None
            except RecursionError:  # not our bug: no "fetch failed unexpectedly" error line
                raise Unavailable("the FHIR server's answer is nested too deeply") from None
        raise Unavailable("too many redirects from the FHIR server")

    def _send(self, url: str) -> requests.Response:
        """GET ``url`` within what is left of the budget, once more on a new connection when
        the first one failed before any answer: a kept-alive connection that the server closed
        meanwhile (GET is idempotent). A timeout is not tried again."""
        for attempt in (1, 2):
            left = self.remaining()
            timeout = (min(self.config.fhir_connect_timeout, left),
                       min(self.config.fhir_read_timeout, left))
            try:
                return self.session.get(url, headers=self._headers, timeout=timeout,
                                        allow_redirects=False, stream=True)
            except requests.Timeout:
                raise
            except requests.ConnectionError:
                lease = _current_lease()
                if attempt == 2 or self.remaining() <= 0 or (lease is not None and lease.aborted):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _take(self, n: int) -> bool:
        """Charge ``n`` bytes to the call's byte budget; False when it is spent."""
        with self._bytes_lock:
            self._bytes_left -= n
            return self._bytes_left >= 0

    def _read(self, resp: requests.Response) -> bytearray:
        body = bytearray()
        try:
            for chunk in resp.iter_content(64 * 1024):
                if len(body) + len(chunk) > MAX_RESPONSE_BYTES:
                    raise Unavailable("the FHIR server's answer is too large")
                if not self._take(len(chunk)):
                    raise Unavailable(
                        f"the FHIR server's answers to this call passed the byte budget of "
                        f"{self.config.fhir_max_call_bytes} bytes (MSKCDS_FHIR_MAX_CALL_BYTES)")
                if self.remaining() <= 0:
                    raise Unavailable("the time budget for the FHIR server ran out")
                body += chunk
        except requests.Timeout:
            raise Unavailable("the FHIR server did not answer in time") from None
        except requests.RequestException as exc:
            if self.remaining() <= 0:
                raise Unavailable("the time budget for the FHIR server ran out") from None
            raise Unavailable(f"reading the FHIR server's answer failed "
                              f"({exc.__class__.__name__})") from None
        return body

    def read(self, template: Template, rendered: str) -> list[dict[str, Any]]:
        doc = self.get_json(f"{self.base}/{rendered.lstrip('/')}")
        expected_id = rendered.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if not isinstance(doc, dict) or doc.get("resourceType") != template.resource_type:
            raise Unavailable(f"the FHIR server returned something other than a "
                              f"{template.resource_type}")
        if doc.get("id") is not None and quote(str(doc["id"]), safe="") != expected_id:
            raise Unavailable(f"the FHIR server returned a different {template.resource_type}")
        return [doc]

    def search(self, template: Template, first: Mapping[str, Any] | None,
               rendered: str | None) -> list[dict[str, Any]]:
        """All pages of a search. ``first``: a page the client already sent (then
        only its ``next`` links are fetched); else ``rendered`` is fetched."""
        pages = 0
        out: list[dict[str, Any]] = []
        page: Any = first
        current = self.base + "/"
        if page is None:
            assert rendered is not None
            current = f"{self.base}/{rendered.lstrip('/')}"
            page = self.get_json(current)
        while True:
            pages += 1
            if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                raise Unavailable("the FHIR server returned something other than a Bundle")
            out.extend(bundle_resources(page, template.resource_type))
            url = next_link(page)
            if url is None:
                return out
            url = _join(current, url)  # FHIR next links are absolute; tolerate relative ones
            if pages >= self.config.fhir_max_pages:
                raise Unavailable(f"the search has more than {self.config.fhir_max_pages} "
                                  f"pages (MSKCDS_FHIR_MAX_PAGES)")
            if not within_base(url, self.base):
                raise Unavailable("the next page link points outside fhirServer; not followed")
            current = url
            page = self.get_json(url)


# --------------------------------------------------------------------------- gather
def _usable_prefetch(template: Template, value: Mapping[str, Any],
                     context: Mapping[str, Any]) -> bool:
    """Is a client-sent value usable for ``template``? OperationOutcomes and wrong
    resource types are not (the key is then fetched as if absent)."""
    rtype = value.get("resourceType")
    if rtype == "OperationOutcome":
        return False
    if template.is_read:
        if rtype != template.resource_type:
            return False
        try:
            rendered = render(template.text, context)
        except Unavailable:
            return True  # cannot check the id; the type is right
        expected_id = rendered.rstrip("/").rsplit("/", 1)[-1]
        return value.get("id") is None or quote(str(value["id"]), safe="") == expected_id
    return rtype in ("Bundle", template.resource_type)


def gather(templates: Mapping[str, str], request: Mapping[str, Any], *, config: Config,
           session: Any = None, refused_server: str | None = None) -> Gathered:
    """Resources for every key in ``templates``; raises PrefetchUnavailable (412).

    ``refused_server``: why the request's ``fhirServer`` may not be used (this client is not
    allowed it). Nothing is then sent to it, its token is not touched, and a key that would
    need a fetch is unavailable for that reason.
    """
    started = time.monotonic()
    deadline = started + config.fhir_total_budget
    context = request.get("context") or {}
    prefetch = request.get("prefetch") or {}
    fhir_server = None if refused_server else request.get("fhirServer")
    auth = None if refused_server else request.get("fhirAuthorization")
    token = auth.get("access_token") if isinstance(auth, Mapping) else None

    out = Gathered()
    unavailable: dict[str, str] = {}
    jobs: dict[str, tuple[Template, Mapping[str, Any] | None, str | None]] = {}

    for key, text in templates.items():
        template = Template(key, text)
        if key in prefetch:
            value = prefetch[key]
            if value is None:
                out.by_key[key], out.source[key] = [], "null"
                continue
            if isinstance(value, Mapping) and _usable_prefetch(template, value, context):
                if value.get("resourceType") == "Bundle":
                    if next_link(value) is None:
                        out.by_key[key] = bundle_resources(value, template.resource_type)
                        out.source[key] = "prefetch"
                    else:
                        jobs[key] = (template, value, None)  # read the remaining pages
                else:
                    out.by_key[key], out.source[key] = [dict(value)], "prefetch"
                continue
        try:
            rendered = render(text, context)
        except Unavailable as exc:
            unavailable[key] = str(exc)
            continue
        if not template.is_read:
            rendered = with_page_size(rendered, config.fhir_page_size)
        jobs[key] = (template, None, rendered)

    if jobs and not fhir_server:
        for key, (_, first, _) in jobs.items():
            unavailable[key] = (refused_server if refused_server else
                                "the client sent a paged Bundle but no fhirServer to read the "
                                "other pages from" if first is not None else
                                "the request has no fhirServer to fetch it from")
        jobs = {}

    if jobs:
        lease = Lease()
        http = session if session is not None else shared_session(config)
        fetcher = _Fetcher(str(fhir_server), token, config, http, deadline)
        pool = fetch_pool(config)
        waiting = list(jobs.items())
        running: dict[cf.Future, str] = {}

        def start_next() -> None:
            key, (template, first, url) = waiting.pop(0)
            if template.is_read and url is not None:  # a read is never a paged Bundle
                running[pool.submit(_leased, lease, fetcher.read, template, url)] = key
            else:
                running[pool.submit(_leased, lease, fetcher.search, template, first, url)] = key

        try:
            # at most fhir_max_workers of this call's fetches at once; the next starts as one ends
            while waiting and len(running) < max(1, config.fhir_max_workers):
                start_next()
            while running:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, _ = cf.wait(running, timeout=left, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    key = running.pop(fut)
                    try:
                        out.by_key[key] = fut.result()
                        out.source[key] = "fhir"
                    except Unavailable as exc:
                        unavailable[key] = str(exc)
                    except Exception as exc:  # a bug of ours must not leak details
                        log.error("fetch failed unexpectedly: %s", exc.__class__.__name__)
                        unavailable[key] = "fetching failed"
                    if waiting:
                        start_next()
            for fut, key in running.items():
                fut.cancel()
                unavailable[key] = "the time budget for the FHIR server ran out"
            for key, _ in waiting:
                unavailable[key] = "the time budget for the FHIR server ran out"
        finally:
            if running:
                # Shut the sockets of the fetches still running, so a straggler (a server that
                # drip-feeds its answer) returns now instead of holding a thread and a socket,
                # and let it return before the call does: its thread is idle again for the
                # next call, which would otherwise start a new one. Connections given back
                # before the end stay pooled for the next call.
                lease.abort()
                cf.wait(running, timeout=STRAGGLER_WAIT)
        log.info("fhir fetch", extra={"fields": {
            "keys_fetched": sorted(k for k in jobs if out.source.get(k) == "fhir"),
            "keys_failed": sorted(k for k in jobs if k in unavailable),
            "fetch_ms": round((time.monotonic() - started) * 1000, 1)}})

    if unavailable:
        raise PrefetchUnavailable(unavailable)
    # Same order whichever way each key was satisfied (stable output for equal input).
    out.by_key = {k: out.by_key[k] for k in templates if k in out.by_key}
    return out

