"""Client authentication: CDS Hooks 2.0 "Trusting CDS Clients", with PyJWT and cryptography.

Every call under /cds-services carries ``Authorization: Bearer <JWT>``, signed by
the CDS Client (EHR) with an asymmetric key. The service accepts the call only when:

* the header's ``alg`` is one CDS Hooks allows (ES/RS/PS 256/384/512; never
  ``none``, never HMAC) and fits the key; ``kid`` names a key of that client;
* ``iss`` is a client in the trusted-clients file (``cds.clients``);
* the key comes from that client's configured JWKS (inline or file), or from its
  configured ``jwks_url``: a ``jku`` header is only ever honoured when it equals
  that URL (nothing else is fetched, so no SSRF through ``jku``). Fetched sets are
  cached for ``MSKCDS_JWKS_CACHE_SECONDS``, fetched in the background with one total
  deadline, and refetched on an unknown ``kid`` (key rotation) at most once per
  ``MSKCDS_JWKS_MIN_REFRESH_SECONDS`` (``cds.security.jwks``: a slow JWKS endpoint of one
  client never stalls another);
* the signature verifies; ``aud`` (string or array) holds the URL of the endpoint
  called; ``exp`` is in the future and ``iat`` not in the future (within
  ``MSKCDS_JWT_LEEWAY_SECONDS``); the token is short-lived: ``exp - iat`` and
  ``exp - now`` at most ``MSKCDS_JWT_MAX_LIFETIME_SECONDS`` (5 minutes); ``iss``, ``aud``,
  ``exp``, ``iat``, ``jti`` are all
  present (the claims CDS Hooks 2.0 requires); ``tenant`` matches when configured;
* the ``jti`` was not accepted before for this ``iss`` while its token lives
  (``cds.replay``; checked last, so unauthenticated junk never fills the cache). A replay
  cache that cannot answer refuses the call with ``ServiceUnavailable`` (503,
  ``Retry-After``), never 401: the token was not accepted, but it was not bad either.

Any failure raises ``Unauthorized(reason)``: the client only learns that
authentication failed; the reason goes to the log, never the token or its jti.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jwt
from jwt.exceptions import (DecodeError, ExpiredSignatureError, ImmatureSignatureError,
                            InvalidIssuerError, InvalidSignatureError, InvalidTokenError,
                            MissingRequiredClaimError)

from cds.security.clients import (ALLOWED_ALGORITHMS, PublicKey, TrustedClient, check_url,
                                  load_clients)
from cds.security.jwks import JwksFetcher
from cds.config import Config, ConfigError
from cds.errors import ServiceUnavailable, Unauthorized
from cds.security.replay import ReplayCache, ReplayCacheError, open_replay_cache, replay_key
from cds.urls import same_base

log = logging.getLogger("mskcds.auth")

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
MAX_TOKEN_CHARS = 16 * 1024
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Client:
    """The authenticated caller, as the HTTP layer needs it."""

    iss: str
    fhir_servers: tuple[str, ...] = ()
    #: the token's ``tenant`` claim (equal to the configured tenant when one is configured)
    tenant: str | None = None
    admin: bool = False


def _show(value: Any, limit: int = 80) -> str:
    """A short, quoted rendering of an untrusted value for a log reason."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


# ---------------------------------------------------------------------------- authenticator
def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header is not 'Bearer <JWT>'")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
    if not _TOKEN_RE.match(token):
        raise Unauthorized("bearer token is not a compact JWS (header.payload.signature)")
    return token


class Authenticator:
    def __init__(self, config: Config, *, clients: Mapping[str, TrustedClient] | None = None,
                 replay_cache: ReplayCache | None = None, fetcher: JwksFetcher | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.clients: Mapping[str, TrustedClient] = {}
        self.replay: ReplayCache | None = replay_cache
        self.fetcher: JwksFetcher | None = fetcher
        if not config.require_auth:
            return
        if clients is None:
            if config.clients_file is None:
                raise ConfigError(
                    "authentication is on (MSKCDS_REQUIRE_AUTH, the default) but "
                    "MSKCDS_CLIENTS_FILE is not set: no EHR could call the service. Set "
                    "MSKCDS_CLIENTS_FILE to the trusted-clients file (see README, 'Connecting an "
                    "EHR'), or MSKCDS_REQUIRE_AUTH=false for local use only.")
            clients = load_clients(config.clients_file)
        self.clients = dict(clients)
        if self.replay is None:
            try:
                self.replay = open_replay_cache(config.replay_cache_url)
            except ReplayCacheError as exc:
                raise ConfigError(f"MSKCDS_REPLAY_CACHE_URL: {exc}") from None
        if self.fetcher is None:
            self.fetcher = JwksFetcher(config.jwks_cache_seconds,
                                       fetch_timeout=config.jwks_fetch_timeout,
                                       min_refresh_seconds=config.jwks_min_refresh_seconds)
        if not config.public_base_url:
            # Else aud would follow the request's Host and X-Forwarded-* headers, which the
            # caller chooses: a token for https://evil.example/... would be accepted.
            raise ConfigError(
                "authentication is on but MSKCDS_PUBLIC_BASE_URL is not set: the JWT aud must "
                "be checked against the URL EHRs call (e.g. https://cds.example.org), never "
                "one built from the request's Host header. Set MSKCDS_PUBLIC_BASE_URL.")
        try:
            check_url(config.public_base_url)
        except ValueError as exc:
            raise ConfigError(f"MSKCDS_PUBLIC_BASE_URL: {exc}") from None
        log.info("authentication on: %d trusted client(s)", len(self.clients))

    def authenticate(self, endpoint_url: str, authorization: str | None) -> Client | None:
        """Return the trusted client, None when authentication is off; raise Unauthorized."""
        if not self.config.require_auth:
            return None
        client, claims = self.verify(bearer_token(authorization), endpoint_url)
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or not tenant or len(tenant) > 255:
            tenant = client.tenant
        return Client(iss=client.iss, fhir_servers=client.fhir_servers, tenant=tenant,
                      admin=client.admin)

    # ------------------------------------------------------------------------ the checks
    def verify(self, token: str, endpoint_url: str) -> tuple[TrustedClient, dict[str, Any]]:
        try:
            # header and claims read at once (one parse; the signed decode below is the other)
            parsed = jwt.decode_complete(token, options={"verify_signature": False})
            header, unverified = parsed["header"], parsed["payload"]
        except (DecodeError, InvalidTokenError) as exc:
            raise Unauthorized(f"malformed JWT: {exc}") from None

        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(f"JWT alg {_show(alg)} is not allowed "
                               f"(allowed: {', '.join(ALLOWED_ALGORITHMS)})")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Unauthorized(f"JWT typ {_show(typ)} is not 'JWT'")
        if "crit" in header:
            raise Unauthorized("JWT header has 'crit' extensions this service does not support")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("JWT header has no kid")

        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized(f"iss {_show(iss)} is not a trusted client")

        key = self._key_for(client, header, kid)
        if not key.accepts(alg):
            raise Unauthorized(f"iss {_show(iss)}: alg {alg} does not fit key {_show(kid)} "
                               f"({key.kty}{' ' + key.crv if key.crv else ''})")
        leeway = self.config.jwt_leeway_seconds
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[alg], issuer=client.iss,
                                leeway=leeway,
                                options={"require": list(REQUIRED_CLAIMS), "verify_aud": False,
                                         "verify_signature": True, "verify_exp": True,
                                         "verify_iat": True, "verify_nbf": True,
                                         "verify_iss": True})
        except InvalidSignatureError:
            raise Unauthorized(f"iss {_show(iss)}: signature does not verify with key "
                               f"{_show(kid)}") from None
        except ExpiredSignatureError:
            raise Unauthorized(f"iss {_show(iss)}: token expired") from None
        except ImmatureSignatureError as exc:
            raise Unauthorized(f"iss {_show(iss)}: token not valid yet ({exc})") from None
        except MissingRequiredClaimError as exc:
            raise Unauthorized(f"iss {_show(iss)}: required claim missing: {exc.claim}") from None
        except InvalidIssuerError:
            raise Unauthorized(f"iss {_show(iss)}: issuer mismatch") from None
        except InvalidTokenError as exc:
            raise Unauthorized(f"iss {_show(iss)}: invalid token: {exc}") from None

        now = self.clock()
        exp, iat = claims["exp"], claims["iat"]
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) \
                or isinstance(iat, bool) or not isinstance(iat, (int, float)):
            raise Unauthorized(f"iss {_show(iss)}: exp and iat must be numbers")
        try:  # a 400-digit integer is valid JSON, but no time (float() overflows: was a 500)
            exp, iat = float(exp), float(iat)
        except OverflowError:
            raise Unauthorized(f"iss {_show(iss)}: exp or iat is out of range") from None
        if exp <= now - leeway:  # PyJWT checked this too; belt and braces with our clock
            raise Unauthorized(f"iss {_show(iss)}: token expired")
        if iat > now + leeway:
            raise Unauthorized(f"iss {_show(iss)}: iat is in the future")
        longest = self.config.jwt_max_lifetime_seconds
        if exp - iat > longest + leeway or exp - now > longest + leeway:
            raise Unauthorized(f"iss {_show(iss)}: token lifetime is longer than {longest} s "
                               "(MSKCDS_JWT_MAX_LIFETIME_SECONDS; exp - iat and exp - now)")
        aud = claims["aud"]
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or not auds or not all(isinstance(a, str) for a in auds):
            raise Unauthorized(f"iss {_show(iss)}: aud must be a string or an array of strings")
        if not any(same_base(a, endpoint_url) for a in auds):
            raise Unauthorized(f"iss {_show(iss)}: aud {_show(auds, 160)} is not this endpoint "
                               f"({endpoint_url})")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise Unauthorized(f"iss {_show(iss)}: jti must be a non-empty string")
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Unauthorized(f"iss {_show(iss)}: tenant does not match the configured tenant")
        if self.replay is None:  # only when authentication is off: fail closed
            raise Unauthorized("no replay cache: authentication is not configured")
        try:
            fresh = self.replay.claim(replay_key(client.iss, jti), exp + leeway)
        except ReplayCacheError as exc:
            # Fail closed, but as what it is: the service is down, not the credentials bad.
            log.error("replay cache unavailable: the token is refused with 503 (%s)", exc,
                      extra={"fields": {"store": "replay cache"}})
            raise ServiceUnavailable() from None
        if not fresh:
            raise Unauthorized(f"iss {_show(iss)}: jti already used (replayed token)")
        return client, claims

    def _key_for(self, client: TrustedClient, header: Mapping[str, Any], kid: str) -> PublicKey:
        jku = header.get("jku")
        if client.jwks_url is not None:
            if jku is not None and (not isinstance(jku, str) or jku != client.jwks_url):
                raise Unauthorized(f"iss {_show(client.iss)}: jku {_show(jku, 160)} is not the "
                                   f"JWKS URL configured for this client; not fetched")
            if self.fetcher is None:  # only when authentication is off: fail closed
                raise Unauthorized("no JWKS fetcher: authentication is not configured")
            key = self.fetcher.key(client.jwks_url, kid)
        else:
            # Keys configured out of band: a jku in the header is never fetched.
            key = client.keys.get(kid)
        if key is None:
            raise Unauthorized(f"iss {_show(client.iss)}: unknown kid {_show(kid)}")
        return key
