"""The request pipeline, free of Flask and HTTP.

request JSON → wire (validate) → gather (prefetch / FHIR server) → normalize
(facts) → evaluate (findings) → cards (built, checked) → response.

One Engine is built at start-up: rules are loaded and validated once, the
service definitions (with their prefetch templates) are fixed, and nothing
per request touches the file system.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from datetime import date, datetime, timezone
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from cds.cards import builder as cards_mod
from cds.clinical import evaluate as evaluate_mod
from cds.clinical.facts import PatientFacts
from cds.clinical import orders as orders_mod
from cds.fhir import gather as gather_mod
from cds.fhir import normalize as normalize_mod
from cds.fhir import orders as draft_mod
from cds.hooks import wire
from cds import metrics
from cds.config import Config
from cds.errors import BadRequest, Issue, PrefetchUnavailable
from cds.hooks.services import (SERVICES, Service, ServiceDeclaration, ServiceRegistry,
                                resolve)
from cds.knowledge.rules import Rules, load_rules
from cds.urls import base_url

log = logging.getLogger("mskcds.engine")


@dataclass(frozen=True)
class CallResult:
    service_id: str
    hook: str
    hook_instance: str
    response: dict[str, Any]
    facts: PatientFacts | None = None   # what the response rests on (the card preview shows it)


#: An evaluator answers a validated hook request from the gathered FHIR resources.
Evaluator = Callable[[Mapping[str, Any], list[dict[str, Any]]], dict[str, Any]]


class Engine:
    def __init__(self, config: Config, rules: Rules | None = None,
                 http_session: Any | None = None,
                 today: Callable[[], date] | None = None,
                 declarations: Iterable[ServiceDeclaration] = SERVICES):
        self.config = config
        self.rules = rules if rules is not None else load_rules(config)
        cards_mod.check_templates(self.rules)   # card text vs the findings' typed variables
        # FHIR-server fallback: gather makes one session per call (its sockets are shut when
        # the budget ends); a session given here (tests) is used as it is.
        self.http_session = http_session
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        # Cards link to their finding's rule page (GET /rules/<finding>) when the service knows
        # its public address (a link must be absolute); none is made otherwise.
        self.rule_pages_url = (base_url(config.public_base_url) + "/rules"
                               if config.public_base_url else None)
        #: The evaluators a declaration in cds.hooks.services may name.
        self.evaluators: dict[str, Evaluator] = {"patient-record": self._patient_record,
                                                 "draft-orders": self._draft_orders}
        templates = self.rules.prefetch_templates()
        self.services = ServiceRegistry(
            resolve(declaration, text=self.rules.service_text(declaration.id), templates=templates,
                    hooks=wire.CONTEXT_SCHEMAS, evaluators=self.evaluators)
            for declaration in declarations)
        wire.check_outgoing(wire.DiscoverySchema(), self.discovery(), "discovery document")

    # ------------------------------------------------------------------ discovery
    def rules_digest(self) -> str:
        """A short content hash of the rules files loaded (for the metrics' rules info)."""
        import hashlib

        digest = hashlib.sha256()
        for path in sorted(Path(self.rules.source_dir).glob("*.yaml")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:12]

    def rules_ready(self) -> None:
        """Raise unless the clinical rules are loaded (readiness)."""
        if self.rules is None or not len(self.services):
            raise RuntimeError("rules not loaded")

    def discovery(self) -> dict[str, Any]:
        return self.services.discovery()

    def service(self, service_id: str) -> Service:
        """The service, or NotFound (404)."""
        return self.services.get(service_id)

    # ------------------------------------------------------------------ calls
    def call(self, service_id: str, payload: Any, *,
             allowed_fhir_servers: Collection[str] | None = None) -> CallResult:
        """Answer one service call.

        ``allowed_fhir_servers``: the base URLs this client may name as
        ``fhirServer`` (from its trusted-client entry, or the configured
        allowlist when authentication is off). ``None`` is never "anything":
        it means no server is allowed.
        """
        service, request, resources = self._gather(service_id, payload, allowed_fhir_servers)
        response = self.evaluators[service.evaluator](request, resources)
        return CallResult(service_id=service.id, hook=service.hook,
                          hook_instance=str(request["hookInstance"]), response=response)

    def preview(self, service_id: str, payload: Any, *,
                allowed_fhir_servers: Collection[str] | None = None) -> CallResult:
        """A call of a patient-record service whose result carries the facts it rests on
        (for the card preview); the same checks as ``call``."""
        service, request, resources = self._gather(service_id, payload, allowed_fhir_servers)
        if service.evaluator != "patient-record":
            raise BadRequest(Issue(f"The preview shows patient-record services; {service.id!r} "
                                   f"is not one.", code="not-supported"))
        facts, response = self.assess(resources, request["context"]["patientId"])
        return CallResult(service_id=service.id, hook=service.hook,
                          hook_instance=str(request["hookInstance"]), response=response,
                          facts=facts)

    def _gather(self, service_id: str, payload: Any, allowed_fhir_servers: Collection[str] | None
                ) -> tuple[Service, dict[str, Any], list[dict[str, Any]]]:
        service = self.service(service_id)
        request = wire.load_hook_request(payload, service.hook)
        fhir_server = request.get("fhirServer")
        refused: str | None = None
        if fhir_server is not None:
            allowed = {base_url(u) for u in (allowed_fhir_servers or ())}
            if base_url(fhir_server) not in allowed:
                # Never contacted, its token never used. The call is still answered when the
                # prefetch holds everything; a key that would need a fetch is a 412 saying why.
                refused = ("the request's fhirServer is not a FHIR server this client may use, "
                           "so nothing is fetched from it (" + (
                               "list it under fhir_servers for this client in "
                               "MSKCDS_CLIENTS_FILE" if self.config.require_auth else
                               "allow it with MSKCDS_ALLOWED_FHIR_SERVERS") + ")")
        try:
            gathered = gather_mod.gather(service.prefetch, request, config=self.config,
                                         session=self.http_session, refused_server=refused)
        except PrefetchUnavailable as exc:
            metrics.get().prefetch_failed(service.id, service.prefetch, exc.keys)
            raise
        metrics.get().prefetch_sources(service.id, gathered.source)
        if refused is not None:
            log.info("fhirServer ignored: not allowed for this client; answered from the "
                     "prefetch")
        return service, request, gathered.resources()

    # ------------------------------------------------------------------ evaluators
    def _patient_record(self, request: Mapping[str, Any],
                        resources: list[dict[str, Any]]) -> dict[str, Any]:
        """The patient's record (prefetch or FHIR server) → cards."""
        return self.evaluate_resources(resources, request["context"]["patientId"])

    def _draft_orders(self, request: Mapping[str, Any],
                      resources: list[dict[str, Any]]) -> dict[str, Any]:
        """order-select / order-sign: the draft orders (only the selected ones for order-select)
        against the patient's record → cards. A record resource with a draft order's Type/id is
        the draft itself (an EHR may store drafts): it is left out of the record."""
        context = request["context"]
        selections = context.get("selections") if request["hook"] == "order-select" else None
        drafts = draft_mod.read_drafts(context["draftOrders"], selections, self.rules)
        draft_refs = wire.draft_order_refs(context["draftOrders"])
        record = [r for r in resources
                  if f"{r.get('resourceType')}/{r.get('id')}" not in draft_refs]
        facts = normalize_mod.normalize(record, context["patientId"], self.rules, as_of=self._today())
        findings = orders_mod.evaluate_orders(facts, drafts.orders, self.rules)
        # per-card schema check as for patient-view: MSKCDS_CHECK_CARDS (on in the tests)
        cards = cards_mod.build_cards(findings, facts, self.rules, check=self.config.check_cards)
        response = {"cards": cards}
        wire.check_response(response, cards_checked=True)
        return response

    def evaluate_resources(self, resources: Iterable[Mapping[str, Any]],
                           patient_id: str) -> dict[str, Any]:
        return self.assess(resources, patient_id)[1]

    def assess(self, resources: Iterable[Mapping[str, Any]],
               patient_id: str) -> tuple[PatientFacts, dict[str, Any]]:
        """The facts read from ``resources`` and the response built on them."""
        facts = normalize_mod.normalize(resources, patient_id, self.rules, as_of=self._today())
        findings = evaluate_mod.evaluate(facts, self.rules)
        cards = cards_mod.build_cards(findings, facts, self.rules,
                                      rule_pages=self.rule_pages_url,
                                      check=self.config.check_cards)
        response = {"cards": cards}
        # The envelope only: each card was checked by build_cards (MSKCDS_CHECK_CARDS) or not at all.
        wire.check_response(response, cards_checked=True)
        return facts, response
