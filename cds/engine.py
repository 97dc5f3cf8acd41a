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
from datetime import date, datetime, timezone
from typing import Any, Callable, Collection, Iterable, Mapping

from cds.cards import builder as cards_mod
from cds.clinical import evaluate as evaluate_mod
from cds.fhir import gather as gather_mod
from cds.fhir import normalize as normalize_mod
from cds.hooks import wire
from cds.config import Config
from cds.errors import BadRequest, Issue, NotFound
from cds.knowledge.rules import Rules, load_rules

log = logging.getLogger("mskcds.engine")


@dataclass(frozen=True)
class Service:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]

    def definition(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hook": self.hook, "id": self.id, "title": self.title,
                               "description": self.description}
        if self.prefetch:
            out["prefetch"] = dict(self.prefetch)
        return out


@dataclass(frozen=True)
class CallResult:
    service_id: str
    hook: str
    hook_instance: str
    response: dict[str, Any]


def normalize_base_url(url: str) -> str:
    return url.rstrip("/")


class Engine:
    def __init__(self, config: Config, rules: Rules | None = None,
                 http_session: Any | None = None,
                 today: Callable[[], date] | None = None):
        self.config = config
        self.rules = rules if rules is not None else load_rules(config)
        # One pooled HTTP session per Engine for FHIR-server fallback (shared by its threads).
        self.http_session = (http_session if http_session is not None
                             else gather_mod.make_session(config))
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        text = self.rules.service_text()   # title and description live in rules/cards.yaml
        self.services: dict[str, Service] = {
            "bone-muscle-health": Service(
                id="bone-muscle-health",
                hook="patient-view",
                title=text["title"],
                description=text["description"],
                prefetch=self.rules.prefetch_templates(),
            ),
        }
        wire.check_outgoing(wire.DiscoverySchema(), self.discovery(), "discovery document")

    # ------------------------------------------------------------------ discovery
    def discovery(self) -> dict[str, Any]:
        return {"services": [s.definition() for s in self.services.values()]}

    def service(self, service_id: str) -> Service:
        try:
            return self.services[service_id]
        except KeyError:
            raise NotFound(Issue(f"No CDS service with id {service_id!r}. "
                                 f"GET /cds-services lists the services.", code="not-found")) from None

    # ------------------------------------------------------------------ calls
    def call(self, service_id: str, payload: Any, *,
             allowed_fhir_servers: Collection[str] | None = None) -> CallResult:
        """Answer one service call.

        ``allowed_fhir_servers``: the base URLs this client may name as
        ``fhirServer`` (from its trusted-client entry, or the configured
        allowlist when authentication is off). ``None`` is never "anything":
        it means no server is allowed.
        """
        service = self.service(service_id)
        request = wire.load_hook_request(payload, service.hook)
        fhir_server = request.get("fhirServer")
        if fhir_server is not None:
            allowed = {normalize_base_url(u) for u in (allowed_fhir_servers or ())}
            if normalize_base_url(fhir_server) not in allowed:
                raise BadRequest(Issue(
                    "fhirServer is not a FHIR server this client is configured for; "
                    "the service sends no request to it.", expression="fhirServer",
                    code="security"))
        patient_id = request["context"]["patientId"]
        gathered = gather_mod.gather(service.prefetch, request, config=self.config,
                                     session=self.http_session)
        response = self.evaluate_resources(gathered.resources(), patient_id)
        return CallResult(service_id=service.id, hook=service.hook,
                          hook_instance=str(request["hookInstance"]), response=response)

    def evaluate_resources(self, resources: Iterable[Mapping[str, Any]],
                           patient_id: str) -> dict[str, Any]:
        facts = normalize_mod.normalize(resources, patient_id, self.rules, as_of=self._today())
        findings = evaluate_mod.evaluate(facts, self.rules)
        cards = cards_mod.build_cards(findings, facts, self.rules)  # each card checked there
        response = {"cards": cards}
        wire.check_response(response, cards_checked=True)
        return response
