"""What every endpoint needs from the app: its settings, engine, authenticator and store.

``create_app`` builds one ``AppState`` and keeps it in ``app.extensions["mskcds"]``;
blueprints reach it with ``state()`` and authenticate a call with ``authenticate()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from flask import current_app, g, request

from cds.config import Config
from cds.engine import Engine
from cds.security.auth import Authenticator, Client
from cds.store.storage import Owner, SqlStore
from cds.urls import base_url

EXTENSION = "mskcds"


@dataclass(frozen=True)
class AppState:
    config: Config
    engine: Engine
    auth: Authenticator
    store: SqlStore
    #: the OpenAPI document of this app (cds.http.openapi), built once at start-up
    openapi: Mapping[str, Any] = field(default_factory=dict)


def state() -> AppState:
    """The running app's state (inside a request or app context)."""
    found: AppState = current_app.extensions[EXTENSION]
    return found


def endpoint_url() -> str:
    """The URL this request was sent to, as a JWT ``aud`` must name it: the configured
    public base URL (MSKCDS_PUBLIC_BASE_URL) or, without one, the request's own host."""
    cfg = state().config
    base = base_url(cfg.public_base_url) if cfg.public_base_url else base_url(request.host_url)
    return base + request.path


def owner(client: Client | None) -> Owner | None:
    """Who issued cards belong to: the authenticated client (None: authentication off)."""
    return Owner(client.iss, client.tenant) if client is not None else None


def authenticate(service_id: str | None = None) -> Client | None:
    """The trusted client calling (None when authentication is off); Unauthorized (401) else."""
    st = state()
    # The request line names a (known) service even when authentication refuses the call.
    if service_id is not None and service_id in st.engine.services:
        g.log["service"] = service_id
    return st.auth.authenticate(endpoint_url(), request.headers.get("Authorization"))
