"""The trusted-clients file: which CDS Clients (EHRs) may call this service.

Path from ``MSKCDS_CLIENTS_FILE``; YAML or JSON; read and validated once at
start-up, every problem reported with the file and the field (``clients[1].jwks_url``)::

    clients:
      - iss: https://sandbox.cds-hooks.org        # the JWT "iss" this client signs with
        jwks_url: https://sandbox.cds-hooks.org/.well-known/jwks.json   # the only jku accepted
        # or  jwks: {keys: [...]}                 # the public keys inline
        # or  jwks_file: keys/sandbox-jwks.json   # relative to this file
        tenant: optional-tenant-id                # when set, the JWT must carry this "tenant"
        fhir_servers: [https://fhir.example.org/r4]   # the only fhirServer values accepted
        admin: false                              # true: may read the feedback summary

Only public keys are accepted (a JWK with a private part is refused: the service
never needs one) and only the asymmetric algorithms CDS Hooks allows.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from cds.config import ConfigError
from cds.urls import base_url

# CDS Hooks 2.0 forbids "none" and symmetric (HMAC) algorithms and recommends ES384/RS384.
ALLOWED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512",
                      "PS256", "PS384", "PS512")
EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
CLIENT_FIELDS = {"iss", "jwks", "jwks_file", "jwks_url", "tenant", "fhir_servers", "name",
                 "admin"}
LOOPBACK_HOSTS = {"localhost"}


@dataclass(frozen=True)
class PublicKey:
    kid: str
    kty: str                 # "EC" or "RSA"
    crv: str | None          # EC curve
    alg: str | None          # the JWK's own "alg", when it names one
    key: Any                 # a cryptography public key object

    def accepts(self, alg: str) -> bool:
        """Whether a JWS with header ``alg`` may be verified with this key."""
        if alg not in ALLOWED_ALGORITHMS or (self.alg is not None and self.alg != alg):
            return False
        if self.kty == "EC":
            return EC_CURVE_FOR_ALG.get(alg) == self.crv
        return self.kty == "RSA" and alg[:2] in ("RS", "PS")


@dataclass(frozen=True)
class TrustedClient:
    iss: str
    fhir_servers: tuple[str, ...] = ()
    tenant: str | None = None
    keys: Mapping[str, PublicKey] = field(default_factory=dict)  # inline / file JWKS
    jwks_url: str | None = None                                  # remote JWKS (the only jku)
    name: str | None = None
    admin: bool = False                                          # may read the feedback summary


class JwksError(ValueError):
    """A JWK Set (or one of its keys) cannot be used."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(value: Any, *, allow_query: bool = False) -> str:
    """An absolute https URL (http only for a loopback host, for local testing)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(f"{value!r} must use https (plain http only for localhost)")
    if parts.username or parts.password:
        raise ValueError(f"{value!r} must not carry credentials")
    if parts.fragment or (parts.query and not allow_query):
        raise ValueError(f"{value!r} must not have a {'fragment' if parts.fragment else 'query'}")
    return value.strip()


def parse_key(jwk: Any) -> PublicKey:
    if not isinstance(jwk, Mapping):
        raise JwksError("a key must be a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwksError("the key has no 'kid' (CDS Hooks selects keys by kid)")
    kty = jwk.get("kty")
    if kty not in ("EC", "RSA"):
        raise JwksError(f"key {kid!r}: kty {kty!r} is not allowed (only EC and RSA public keys)")
    private = [m for m in PRIVATE_JWK_MEMBERS if m in jwk]
    if private:
        raise JwksError(f"key {kid!r} holds private key material ({', '.join(private)}): "
                        "configure only the public half")
    if jwk.get("use") not in (None, "sig"):
        raise JwksError(f"key {kid!r}: use {jwk.get('use')!r} is not 'sig'")
    alg = jwk.get("alg")
    if alg is not None and alg not in ALLOWED_ALGORITHMS:
        raise JwksError(f"key {kid!r}: alg {alg!r} is not one of {', '.join(ALLOWED_ALGORITHMS)}")
    crv = jwk.get("crv") if kty == "EC" else None
    if kty == "EC" and crv not in EC_CURVE_FOR_ALG.values():
        raise JwksError(f"key {kid!r}: EC curve {crv!r} is not P-256, P-384 or P-521")
    if alg is not None and kty == "EC" and EC_CURVE_FOR_ALG.get(alg) != crv:
        raise JwksError(f"key {kid!r}: alg {alg} does not match curve {crv}")
    if alg is not None and kty == "RSA" and alg[:2] not in ("RS", "PS"):
        raise JwksError(f"key {kid!r}: alg {alg} is not an RSA algorithm")
    try:
        key = PyJWK(dict(jwk), algorithm=alg or ("RS384" if kty == "RSA" else None)).key
    except (PyJWKError, ValueError, TypeError) as exc:
        raise JwksError(f"key {kid!r} cannot be read: {exc}") from None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        raise JwksError(f"key {kid!r}: RSA key of {key.key_size} bits (at least {MIN_RSA_BITS})")
    return PublicKey(kid=kid, kty=kty, crv=crv, alg=alg, key=key)


def parse_jwks(doc: Any, *, strict: bool = True) -> dict[str, PublicKey]:
    """kid → key. ``strict`` (configured sets): any bad key is an error.

    Not strict (fetched sets): keys this service cannot use (encryption keys,
    other key types) are skipped, the others kept.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksError("a JWK Set must be an object with a 'keys' list")
    out: dict[str, PublicKey] = {}
    for i, jwk in enumerate(doc["keys"]):
        try:
            key = parse_key(jwk)
        except JwksError as exc:
            if strict:
                raise JwksError(f"keys[{i}]: {exc}") from None
            continue
        if key.kid in out:
            if strict:
                raise JwksError(f"keys[{i}]: kid {key.kid!r} appears twice (kids must be unique)")
            out.pop(key.kid)  # ambiguous: use neither
            continue
        out[key.kid] = key
    if strict and not out:
        raise JwksError("the JWK Set has no keys")
    return out


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}:"
                          f" {exc}") from None


def load_clients(path: Path | str) -> dict[str, TrustedClient]:
    """iss → TrustedClient. Every problem in the file is reported at once, in one
    ConfigError naming the file and each field (``clients[1].jwks_url``)."""
    path = Path(path)
    doc = _read_document(path)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("clients"), list):
        raise ConfigError(f"{path}: must be a mapping with a 'clients' list")
    if not doc["clients"]:
        raise ConfigError(f"{path}: 'clients' is empty: no EHR could call the service")
    problems: list[str] = []
    unknown_top = set(doc) - {"clients"}
    if unknown_top:
        problems.append(f"unknown top-level field(s): {', '.join(sorted(map(str, unknown_top)))}")
    clients: dict[str, TrustedClient] = {}
    for i, entry in enumerate(doc["clients"]):
        where = f"clients[{i}]"
        client = _load_client(entry, where, path.parent, problems)
        if client is None:
            continue
        if client.iss in clients:
            problems.append(f"{where}.iss: {client.iss!r} is configured twice")
            continue
        clients[client.iss] = client
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise ConfigError(f"{path}: {count}{'; '.join(problems)}")
    return clients


def _load_client(entry: Any, where: str, base_dir: Path,
                 problems: list[str]) -> TrustedClient | None:
    """One entry; its problems are appended to ``problems`` (None when there were any)."""
    before = len(problems)
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: must be a mapping")
        return None
    unknown = set(entry) - CLIENT_FIELDS
    if unknown:
        problems.append(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                        f"(allowed: {', '.join(sorted(CLIENT_FIELDS))})")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss.strip():
        problems.append(f"{where}.iss: required, a non-empty string (the JWT's iss)")
    sources = [k for k in ("jwks", "jwks_file", "jwks_url") if entry.get(k) is not None]
    keys: dict[str, PublicKey] = {}
    jwks_url = None
    if len(sources) != 1:
        problems.append(f"{where}: give exactly one of jwks, jwks_file, jwks_url "
                        f"(found {', '.join(sources) or 'none'})")
    else:
        source = sources[0]
        try:
            if source == "jwks":
                keys = parse_jwks(entry["jwks"])
            elif source == "jwks_file":
                if not isinstance(entry["jwks_file"], str):
                    raise ValueError("must be a path")
                jwks_path = (base_dir / entry["jwks_file"]).resolve()
                keys = parse_jwks(_read_document(jwks_path))
            else:
                jwks_url = check_url(entry["jwks_url"], allow_query=True)
        except ConfigError as exc:  # the jwks_file cannot be read: names the file
            problems.append(f"{where}.{source}: {exc}")
        except (JwksError, ValueError) as exc:
            problems.append(f"{where}.{source}: {exc}")
    tenant = entry.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        problems.append(f"{where}.tenant: must be a non-empty string when given")
    servers_raw = entry.get("fhir_servers", [])
    servers = []
    if not isinstance(servers_raw, list):
        problems.append(f"{where}.fhir_servers: must be a list of FHIR base URLs")
        servers_raw = []
    for j, url in enumerate(servers_raw):
        try:
            servers.append(base_url(check_url(url)))
        except ValueError as exc:
            problems.append(f"{where}.fhir_servers[{j}]: {exc}")
    if len(problems) > before or not isinstance(iss, str):
        return None
    name = entry.get("name")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"{where}.admin: must be true or false")
    return TrustedClient(iss=iss.strip(), fhir_servers=tuple(servers), tenant=tenant, keys=keys,
                         jwks_url=jwks_url, name=str(name) if name is not None else None,
                         admin=admin)
