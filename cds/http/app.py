"""The app factory: settings, engine, authenticator and store built once, then the
request lifecycle, the error handlers and one blueprint per endpoint family.

Only this package knows HTTP. Clinical work happens in ``cds.engine``; these modules turn
HTTP into calls on it and its exceptions into JSON responses. Nothing a client sends may
produce a 500: every error leaves as an OperationOutcome with a 4xx status, and an
unexpected failure of our own becomes a 500 with a generic body and no stack trace.
"""
from __future__ import annotations

import gc
import logging
from typing import Any, Mapping

from flask import Flask

from cds import logs, metrics
from cds.config import Config
from cds.engine import Engine
from cds.http import (admin, errors, feedback, health, lifecycle, openapi, ops, pages,
                      services)
from cds.http.state import EXTENSION, AppState
from cds.security.auth import Authenticator
from cds.store.storage import open_store

log = logging.getLogger("mskcds.http")

#: The endpoint families, each a blueprint (a new family: a module with a ``blueprint``, listed here).
BLUEPRINTS = (health.blueprint, services.blueprint, feedback.blueprint, admin.blueprint,
              pages.blueprint, ops.blueprint)


def create_app(config: Mapping[str, Any] | Config | None = None) -> Flask:
    """App factory. ``config``: a Config, or a mapping overriding MSKCDS_* settings."""
    cfg = config if isinstance(config, Config) else Config.from_env(config)
    logs.configure(cfg.log_level)
    app = Flask("mskcds")
    # One byte over the limit: werkzeug stops a body without Content-Length (chunked) at
    # MAX_CONTENT_LENGTH *silently*; reading limit+1 bytes lets read_json see it is too big.
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = Engine(cfg)
    app.extensions[EXTENSION] = AppState(config=cfg, engine=engine, auth=Authenticator(cfg),
                                         store=open_store(cfg),
                                         openapi=openapi.document(engine, cfg))
    metrics.get().rules_loaded(engine.rules_digest(), cfg.vitamin_d_profile,
                               cfg.sarcopenia_profile)
    if not cfg.require_auth:
        servers = ", ".join(cfg.allowed_fhir_servers)
        log.warning("AUTHENTICATION IS OFF (MSKCDS_REQUIRE_AUTH=false): any caller is trusted. "
                    "For local use only; never deploy like this. fhirServer: "
                    + (f"only {servers} may be fetched from" if servers else
                       "none allowed, calls are answered from their prefetch (or 412)")
                    + "; MSKCDS_ALLOWED_FHIR_SERVERS sets which FHIR servers may be used.")
    lifecycle.register(app)
    errors.register(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # Everything built so far (rules, schemas, models: ~120,000 objects) lives as long as
    # the process: move it out of the garbage collector's generations, so a full collection
    # no longer walks it. Without this, cost per Observation grew with the request (each
    # full collection during a 10,000-Observation call re-walked the start-up objects).
    # Here at the end of create_app, the gunicorn master (before fork), the CLI and
    # in-process callers all get it.
    gc.freeze()
    return app
