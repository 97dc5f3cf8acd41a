"""Test helpers for client authentication: real key pairs and JWTs signed as a CDS Client would.

Tokens are signed here with PyJWT and cryptography directly (not with cds.auth's own
helpers), so the service is checked against an independent signer.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_KID = "example-kid"

_DROP = object()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def public_jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    jwk = json.loads(get_default_algorithms()[alg].to_jwk(private_key.public_key()))
    jwk.pop("key_ops", None)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


@dataclass
class Signer:
    """One CDS Client key: mints tokens; ``claims``/``headers`` overrides, ``None`` drops a claim."""

    iss: str
    kid: str
    key: Any
    alg: str
    jku: str | None = None
    tenant: str | None = None
    issued: list[dict[str, Any]] = field(default_factory=list)

    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.key, self.kid, self.alg)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)

    def claims(self, aud: Any, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.iss, "aud": aud, "exp": now + 300, "iat": now,
                                  "jti": str(uuid.uuid4())}
        if self.tenant:
            claims["tenant"] = self.tenant
        claims.update(over)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, aud: Any, *, alg: str | None = None, headers: dict[str, Any] | None = None,
              **over: Any) -> str:
        claims = self.claims(aud, **over)
        hdr: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            hdr["jku"] = self.jku
        hdr.update(headers or {})
        hdr = {k: v for k, v in hdr.items() if v is not None}
        token = jwt.encode(claims, self.key, algorithm=alg or self.alg, headers=hdr)
        self.issued.append({"token": token, "jti": claims.get("jti")})
        return token

    def bearer(self, aud: Any, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(aud, **kw)}"}


def new_ec_signer(iss: str, kid: str, **kw: Any) -> Signer:
    return Signer(iss=iss, kid=kid, key=ec.generate_private_key(ec.SECP384R1()), alg="ES384", **kw)


def new_rsa_signer(iss: str, kid: str, **kw: Any) -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Signer(iss=iss, kid=kid, key=key, alg="RS384", **kw)


def signer_from_jwk(path: Path, iss: str, **kw: Any) -> Signer:
    doc = json.loads(path.read_text())
    jwk = doc["keys"][0] if "keys" in doc else doc
    return Signer(iss=iss, kid=jwk["kid"], key=jwt.PyJWK(jwk).key, alg=jwk["alg"], **kw)


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """``alg: none``: header.payload. (empty signature)."""
    return f"{b64json(header)}.{b64json(claims)}."


def hs256_token(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """The key-confusion attack: HMAC "signed" with the client's PUBLIC key as the secret."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def write_clients(path: Path, clients: list[dict[str, Any]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"clients": clients}, sort_keys=False))
    return path
