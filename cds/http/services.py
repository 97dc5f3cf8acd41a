"""CDS Hooks 2.0 discovery (``GET /cds-services``) and service calls
(``POST /cds-services/{id}``): authenticate, read the body, let the engine answer,
record the cards issued (for feedback)."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g

from cds import gcpause, metrics
from cds.http.body import json_response, read_json
from cds.http.state import authenticate, owner, state

blueprint = Blueprint("services", __name__)


@blueprint.get("/cds-services")
def discovery() -> Response:
    authenticate()
    return json_response(state().engine.discovery())


@blueprint.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    st = state()
    client = authenticate(service_id)
    st.engine.service(service_id)  # 404 before reading the body
    g.log.update(service=service_id)
    # The parsed request, facts and cards die with the call (when _answer returns): the
    # collector need not walk them while they are alive.
    with gcpause.paused():
        return _answer(st, client, service_id)


def _answer(st: Any, client: Any, service_id: str) -> Response:
    payload = read_json(st.config.max_body_bytes)
    if isinstance(payload, dict) and isinstance(payload.get("hook"), str):
        g.log["hook"] = payload["hook"][:40]
    allowed = client.fhir_servers if client is not None else st.config.allowed_fhir_servers
    result = st.engine.call(service_id, payload, allowed_fhir_servers=allowed)
    st.store.queue_issued(result.service_id, result.hook, result.hook_instance,
                          result.response["cards"], owner=owner(client))
    g.log["cards"] = len(result.response["cards"])
    metrics.get().cards_issued(result.response["cards"])
    return json_response(result.response)
