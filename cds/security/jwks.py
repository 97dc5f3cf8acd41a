"""Remote JWK Sets (a trusted client's ``jwks_url``): fetched in the background, never on a lock.

One client's slow or drip-feeding JWKS endpoint must not stall any other client, and
no valid token is needed to make the service look a key up (the key is needed to
check the signature). So:

* each fetch has ONE total deadline (``MSKCDS_JWKS_FETCH_TIMEOUT``): a watchdog shuts
  the socket down when it passes, however slowly the other end answers;
* a fetch runs in its own thread, at most one per URL at a time; the lock guards the
  small state dicts only and is never held during network I/O;
* a cached set is served while a refresh is pending or after it failed (a stale set is
  refreshed in the background, nobody waits for it);
* a request waits for a fetch only when the set does not hold its ``kid`` (first
  contact, or a rotated key), and only ONE request per URL and process waits (at most
  the deadline); the others are refused at once;
* a refetch for an unknown ``kid``, or after a failed fetch, is made at most once per
  ``MSKCDS_JWKS_MIN_REFRESH_SECONDS`` per URL (the per-client rate limit).
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from cds.errors import Unauthorized
from cds.security.clients import JwksError, PublicKey, parse_jwks

MAX_JWKS_BYTES = 64 * 1024


class JwksFetchError(Exception):
    """A fetch failed; the message (for the log) says why."""


def fetch_jwks(url: str, timeout: float, max_bytes: int = MAX_JWKS_BYTES) -> dict[str, PublicKey]:
    """GET ``url`` within ``timeout`` seconds in all (connect, headers, body), no redirects."""
    started = time.monotonic()
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    watchdog: threading.Timer | None = None
    try:
        try:
            conn.connect()
            left = timeout - (time.monotonic() - started)
            sock = conn.sock
            watchdog = threading.Timer(max(0.0, left), _shutdown, args=(sock,))
            watchdog.daemon = True
            watchdog.start()
            conn.request("GET", target, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise JwksFetchError(f"JWKS fetch from {url} answered HTTP {resp.status} "
                                     "(redirects are not followed)")
            body = resp.read(max_bytes + 1)
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() - started >= timeout:
                raise JwksFetchError(f"JWKS fetch from {url} took longer than {timeout:g} s "
                                     "(MSKCDS_JWKS_FETCH_TIMEOUT)") from None
            raise JwksFetchError(f"JWKS fetch from {url} failed: {exc.__class__.__name__}") from None
    finally:
        if watchdog is not None:
            watchdog.cancel()
        conn.close()
    if time.monotonic() - started >= timeout:
        raise JwksFetchError(f"JWKS fetch from {url} took longer than {timeout:g} s "
                             "(MSKCDS_JWKS_FETCH_TIMEOUT)")
    if len(body) > max_bytes:
        raise JwksFetchError(f"JWKS at {url} is larger than {max_bytes} bytes")
    try:
        return parse_jwks(json.loads(body.decode("utf-8")), strict=False)
    except (ValueError, JwksError) as exc:
        raise JwksFetchError(f"JWKS at {url} is not a usable JWK Set: {exc}") from None
    except RecursionError:  # deeply nested JSON inside the size cap
        raise JwksFetchError(f"JWKS at {url} is not a usable JWK Set: nested too deeply") from None


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@dataclass
class _UrlState:
    keys: dict[str, PublicKey] | None = None
    fetched_at: float = float("-inf")
    #: no new attempt before this (after a failed fetch, or a refetch for an unknown kid)
    next_allowed: float = float("-inf")
    inflight: threading.Event | None = None
    waiter: bool = False
    last_error: str | None = None


class JwksFetcher:
    """Caches the JWK Sets at configured ``jwks_url``s (and nothing else)."""

    def __init__(self, cache_seconds: float, *, fetch_timeout: float = 2.0,
                 min_refresh_seconds: float = 30.0,
                 fetch: Callable[[str, float], dict[str, PublicKey]] = fetch_jwks,
                 clock: Callable[[], float] = time.monotonic):
        self.cache_seconds = cache_seconds
        self.fetch_timeout = fetch_timeout
        self.min_refresh_seconds = min_refresh_seconds
        self._fetch = fetch
        self.clock = clock
        self._states: dict[str, _UrlState] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> PublicKey | None:
        """The key ``kid`` of the set at ``url``; None when the set does not hold it.

        Raises Unauthorized when no set could be had (none cached and the fetch failed,
        is rate-limited, or another request is already waiting for it).
        """
        with self._lock:
            state = self._states.setdefault(url, _UrlState())
            now = self.clock()
            keys = state.keys
            if keys is not None and kid in keys:
                if now - state.fetched_at >= self.cache_seconds:
                    self._start(url, state, now, limited=False)  # refresh; serve the cached key
                return keys[kid]
            # Not in the set (or no set yet): the client may have rotated its key.
            self._start(url, state, now, limited=keys is not None)
            done = state.inflight
            if done is None:
                return self._without_fetch(url, state, now)
            if state.waiter:
                if keys is None:
                    raise Unauthorized(f"JWKS fetch from {url} is in progress for another "
                                       "request; not waiting for it")
                return None
            state.waiter = True
        try:
            done.wait(self.fetch_timeout + 1.0)
        finally:
            with self._lock:
                state.waiter = False
        with self._lock:
            if state.keys is None:
                raise Unauthorized(state.last_error or f"JWKS fetch from {url} did not finish")
            return state.keys.get(kid)

    def _without_fetch(self, url: str, state: _UrlState, now: float) -> PublicKey | None:
        if state.keys is None:
            wait = max(0.0, state.next_allowed - now)
            raise Unauthorized(f"{state.last_error or f'JWKS from {url} unavailable'}; next "
                               f"attempt in {wait:.0f} s (MSKCDS_JWKS_MIN_REFRESH_SECONDS)")
        return None

    def _start(self, url: str, state: _UrlState, now: float, *, limited: bool) -> None:
        """Start a background fetch unless one is running or the rate limit says no.

        ``limited``: a refetch for an unknown kid (counts against the rate limit even when
        it succeeds). A failed fetch always does.
        """
        if state.inflight is not None or now < state.next_allowed:
            return
        done = threading.Event()
        state.inflight = done
        if limited:
            state.next_allowed = now + self.min_refresh_seconds
        thread = threading.Thread(target=self._run, args=(url, state, done), daemon=True,
                                  name="mskcds-jwks")
        thread.start()

    def _run(self, url: str, state: _UrlState, done: threading.Event) -> None:
        try:
            keys = self._fetch(url, self.fetch_timeout)
        except JwksFetchError as exc:
            with self._lock:
                state.last_error = str(exc)
                state.next_allowed = max(state.next_allowed,
                                         self.clock() + self.min_refresh_seconds)
        except Exception as exc:  # never let a bug kill the thread silently with the flag set
            with self._lock:
                state.last_error = f"JWKS fetch from {url} failed: {exc.__class__.__name__}"
                state.next_allowed = self.clock() + self.min_refresh_seconds
        else:
            with self._lock:
                state.keys, state.fetched_at, state.last_error = keys, self.clock(), None
        finally:
            with self._lock:
                state.inflight = None
            done.set()
