"""Client authentication (placeholder: issue 4 replaces this module with JWT verification)."""
from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import Unauthorized


@dataclass(frozen=True)
class Client:
    iss: str
    fhir_servers: tuple[str, ...] = ()
    tenant: str | None = None


class Authenticator:
    def __init__(self, config: Config):
        self.config = config

    def authenticate(self, endpoint_url: str, authorization: str | None) -> Client | None:
        """Return the trusted client, None when authentication is off; raise Unauthorized."""
        if not self.config.require_auth:
            return None
        raise Unauthorized("JWT verification is not implemented yet")
