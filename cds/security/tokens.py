"""Key and token tooling for the client side (``mskcds keygen`` / ``mskcds token``).

What a CDS Client (EHR) does: make a key pair, publish its public JWKS, sign a short-lived
JWT for the endpoint it calls. For smoke tests and EHR integrators; the service itself
never signs anything and never imports this module (``cds.security.auth`` verifies).
"""
from __future__ import annotations

import json
import time
from typing import Any

import jwt

from cds.security.clients import ALLOWED_ALGORITHMS


def load_private_key(path: str) -> tuple[Any, str | None, str | None]:
    """(private key, kid, alg) from a PEM file, a private JWK, or a JWKS with one private key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    raw = open(path, "rb").read()
    if raw.lstrip().startswith(b"-----BEGIN"):
        return load_pem_private_key(raw, password=None), None, None
    doc = json.loads(raw.decode("utf-8"))
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        private = [k for k in doc["keys"] if isinstance(k, dict) and "d" in k]
        if len(private) != 1:
            raise ValueError(f"{path}: the JWKS must hold exactly one private key")
        doc = private[0]
    if not isinstance(doc, dict) or "d" not in doc:
        raise ValueError(f"{path}: not a private JWK")
    return jwt.PyJWK(doc).key, doc.get("kid"), doc.get("alg")


def default_alg(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    raise ValueError("only EC and RSA private keys are supported")


def mint_token(key: Any, *, iss: str, aud: str | list[str], kid: str, alg: str | None = None,
               jku: str | None = None, tenant: str | None = None, lifetime: int = 300,
               now: float | None = None) -> str:
    """A CDS Hooks client JWT (as the CDS Hooks sandbox builds them: 5 minutes, fresh jti)."""
    import uuid

    alg = alg or default_alg(key)
    if alg not in ALLOWED_ALGORITHMS:
        raise ValueError(f"alg {alg} is not allowed")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": iss, "aud": aud, "exp": issued + lifetime, "iat": issued,
                              "jti": str(uuid.uuid4())}
    if tenant:
        claims["tenant"] = tenant
    headers: dict[str, Any] = {"kid": kid, "typ": "JWT"}
    if jku:
        headers["jku"] = jku
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def generate_key(alg: str = "ES384") -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if alg.startswith("ES"):
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
        return ec.generate_private_key(curve)
    if alg[:2] in ("RS", "PS") and alg in ALLOWED_ALGORITHMS:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"alg {alg} is not allowed")


def public_jwks(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The JWKS (public half only) a CDS Client publishes, or the service operator configures."""
    from jwt.algorithms import get_default_algorithms

    jwk = json.loads(get_default_algorithms()[alg].to_jwk(key.public_key()))
    jwk.pop("key_ops", None)  # "use" says it; RFC 7517 advises not to send both
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return {"keys": [jwk]}
