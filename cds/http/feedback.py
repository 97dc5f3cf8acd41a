"""CDS Hooks 2.0 feedback (``POST /cds-services/{id}/feedback``): what the clinician did
with our cards, validated and stored all or nothing."""
from __future__ import annotations

from flask import Blueprint, Response, g

from cds import metrics
from cds.http.body import json_response, read_json
from cds.http.state import authenticate, owner, state

blueprint = Blueprint("feedback", __name__)


@blueprint.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    st = state()
    client = authenticate(service_id)
    st.engine.service(service_id)
    g.log.update(service=service_id)
    payload = read_json(st.config.max_body_bytes)
    # Another client's (or tenant's) card is answered exactly as an unknown card.
    counts = st.store.record_feedback(service_id, payload, owner=owner(client))
    g.log["feedback_items"] = counts.stored + counts.duplicates
    metrics.get().feedback_outcomes(counts.outcomes)
    # Honest counts: a retry of a report already stored is a duplicate, not stored again.
    return json_response({"stored": counts.stored, "duplicates": counts.duplicates}, 200)
