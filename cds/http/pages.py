"""HTML pages: GET /rules, GET /rules/<finding> (public, like discovery) and POST /preview.

The rule pages are rendered once, when the blueprint is registered (start-up), from the
loaded rules: they hold no patient data. The preview (off unless MSKCDS_PREVIEW_ENABLED)
takes the same request as a service call, with the same authentication and body checks,
and answers with the cards as an EHR would show them; its errors are the service's JSON
OperationOutcomes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState

from cds.errors import BadRequest, Issue, NotFound
from cds.hooks.bundle import request_from_bundle
from cds.http.body import read_json
from cds.http.state import EXTENSION, AppState, authenticate, state
from cds.pages import charts
from cds.pages.preview import render_preview
from cds.pages.render import CSP, render_page
from cds.pages.ruledocs import build_docs
from cds.urls import base_url

blueprint = Blueprint("pages", __name__)
_PAGES = "mskcds.pages"


@dataclass(frozen=True)
class RulePages:
    index: str
    findings: Mapping[str, str]
    base: str            # the public base URL, or "" (links relative to this server)


@blueprint.record_once
def _render_rule_pages(setup: BlueprintSetupState) -> None:
    st: AppState = setup.app.extensions[EXTENSION]
    cfg, rules = st.config, st.engine.rules
    docs = build_docs(cfg, rules)
    labels = {cid: c.label for cid, c in rules.citations.items()}
    base = base_url(cfg.public_base_url) if cfg.public_base_url else ""
    setup.app.extensions[_PAGES] = RulePages(
        index=render_page("rules_index.html", docs=docs, base=base),
        findings={code: render_page("rule.html", f=f, docs=docs, base=base, labels=labels)
                  for code, f in docs.findings.items()},
        base=base)
    if cfg.preview_enabled:
        charts.warm_up()   # matplotlib loaded once, before the workers fork (gunicorn --preload)


def _pages() -> RulePages:
    pages: RulePages = current_app.extensions[_PAGES]
    return pages


def html_response(body: str, status: int = 200, cache: str = "no-store") -> Response:
    resp = Response(body, status=status, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Cache-Control"] = cache
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


@blueprint.get("/rules")
def rules_index() -> Response:
    return html_response(_pages().index, cache="public, max-age=300")


@blueprint.get("/rules/<finding>")
def rule_page(finding: str) -> Response:
    html = _pages().findings.get(finding)
    if html is None:
        raise NotFound(Issue(f"No rule page for finding {finding[:80]!r}. GET /rules lists the "
                             f"findings.", code="not-found"))
    return html_response(html, cache="public, max-age=300")


@blueprint.post("/preview")
def preview() -> Response:
    st = state()
    if not st.config.preview_enabled:
        raise NotFound("The card preview is disabled (MSKCDS_PREVIEW_ENABLED).")
    service_id = request.args.get("service", "bone-muscle-health")
    client = authenticate(service_id)
    service = st.engine.service(service_id)   # 404 before reading the body
    g.log.update(service=service_id)
    payload: Any = read_json(st.config.max_body_bytes)
    if isinstance(payload, dict) and payload.get("resourceType") == "Bundle":
        try:
            payload = request_from_bundle(payload, service.hook, dict(service.prefetch))
        except ValueError as exc:
            raise BadRequest(Issue(f"{exc}.", code="invalid")) from None
    allowed = client.fhir_servers if client is not None else st.config.allowed_fhir_servers
    result = st.engine.preview(service.id, payload, allowed_fhir_servers=allowed)
    assert result.facts is not None   # preview() always carries them
    g.log["cards"] = len(result.response["cards"])
    return html_response(render_preview(result.facts, result.response["cards"], st.engine.rules,
                                        docs_base=_pages().base))
