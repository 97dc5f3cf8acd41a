"""``GET /admin/feedback-summary?from=&to=``: the feedback report over HTTP (off unless
MSKCDS_ADMIN_SUMMARY_ENABLED; authenticated like every other call)."""
from __future__ import annotations

from flask import Blueprint, Response, request

from cds.errors import NotFound
from cds.http.body import json_response
from cds.http.state import authenticate, state

blueprint = Blueprint("admin", __name__)


@blueprint.get("/admin/feedback-summary")
def feedback_summary() -> Response:
    st = state()
    if not st.config.admin_summary_enabled:
        raise NotFound("The feedback summary is disabled (MSKCDS_ADMIN_SUMMARY_ENABLED).")
    authenticate()
    return json_response(st.store.summary(request.args.get("from"), request.args.get("to")))
