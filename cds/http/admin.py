"""``GET /admin/feedback-summary?from=&to=``: the feedback report over HTTP (off unless
MSKCDS_ADMIN_SUMMARY_ENABLED; with authentication on, only for clients marked
``admin: true`` in the trusted-clients file; ``?client=`` / ``?tenant=`` narrow it)."""
from __future__ import annotations

from flask import Blueprint, Response, request

from cds.errors import Forbidden, NotFound
from cds.http.body import json_response
from cds.http.state import authenticate, state

blueprint = Blueprint("admin", __name__)


@blueprint.get("/admin/feedback-summary")
def feedback_summary() -> Response:
    st = state()
    if not st.config.admin_summary_enabled:
        raise NotFound("The feedback summary is disabled (MSKCDS_ADMIN_SUMMARY_ENABLED).")
    client = authenticate()
    if client is not None and not client.admin:
        raise Forbidden("This client may not read the feedback summary: it is for clients "
                        "marked 'admin: true' in the trusted-clients file.")
    # ?client=<iss> / ?tenant=<id>: the figures of one client or tenant only.
    return json_response(st.store.summary(request.args.get("from"), request.args.get("to"),
                                          client=request.args.get("client"),
                                          tenant=request.args.get("tenant")))
