"""``GET /healthz``: the process is up and which services it offers (no authentication)."""
from __future__ import annotations

from flask import Blueprint, Response

from cds.http.body import json_response
from cds.http.state import state

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok", "services": list(state().engine.services)})
