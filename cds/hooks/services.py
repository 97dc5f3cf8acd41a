"""The CDS services this server offers, declared in one place.

``SERVICES`` is the registry: one ``ServiceDeclaration`` per service. Discovery
(``GET /cds-services``) lists them in this order; ``POST /cds-services/{id}`` is
answered by the evaluator the declaration names. Adding a service is adding a
declaration here (plus its evaluator in ``cds.engine`` and its title and
description in ``rules/cards.yaml``): nothing else lists services.

A declaration is data only; ``cds.engine.Engine`` resolves it at start-up into a
``Service`` (title and description from ``rules/``, the named prefetch templates,
the evaluator) and stops start-up when a part is missing: a hook without a wire
context schema, an unknown prefetch key or evaluator, a duplicate id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from cds.errors import Issue, NotFound
from cds.hooks.wire import SERVICE_ID


@dataclass(frozen=True)
class ServiceDeclaration:
    """What a service is, before the rules give it words and templates."""

    id: str
    hook: str                   # a hook with a context schema in cds.hooks.wire.CONTEXT_SCHEMAS
    evaluator: str              # the name of the engine's evaluator that answers it
    prefetch: tuple[str, ...]   # keys of the prefetch templates in rules/ it asks the EHR for


#: The registry. Order is discovery order.
SERVICES: tuple[ServiceDeclaration, ...] = (
    ServiceDeclaration(id="bone-muscle-health", hook="patient-view", evaluator="patient-record",
                       prefetch=("patient", "observations", "conditions", "medications",
                                 "medicationStatements", "diagnosticReports")),
    # Order checks: the draft orders in the context against the same record (rules/orders.yaml).
    ServiceDeclaration(id="bone-health-order-select", hook="order-select", evaluator="draft-orders",
                       prefetch=("patient", "observations", "conditions", "medications")),
    ServiceDeclaration(id="bone-health-order-sign", hook="order-sign", evaluator="draft-orders",
                       prefetch=("patient", "observations", "conditions", "medications")),
)


class ServiceRegistryError(ValueError):
    """A declaration cannot be served (a programming or rules error); start-up stops."""


@dataclass(frozen=True)
class Service:
    """A declared service, resolved: what discovery shows and how a call is answered."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    evaluator: str  # the name of the engine's evaluator

    def definition(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hook": self.hook, "id": self.id, "title": self.title,
                               "description": self.description}
        if self.prefetch:
            out["prefetch"] = dict(self.prefetch)
        return out


def resolve(declaration: ServiceDeclaration, *, text: Mapping[str, str],
            templates: Mapping[str, str], hooks: Iterable[str],
            evaluators: Iterable[str]) -> Service:
    """The ``Service`` for ``declaration``; ServiceRegistryError naming what is missing."""
    where = f"service {declaration.id!r}"
    if not SERVICE_ID.match(declaration.id):
        raise ServiceRegistryError(f"{where}: the id may hold only letters, digits, '-', '_', '.'")
    if declaration.hook not in set(hooks):
        raise ServiceRegistryError(f"{where}: hook {declaration.hook!r} has no context schema "
                                   "in cds.hooks.wire.CONTEXT_SCHEMAS")
    if declaration.evaluator not in set(evaluators):
        raise ServiceRegistryError(f"{where}: no evaluator named {declaration.evaluator!r}")
    missing = [key for key in declaration.prefetch if key not in templates]
    if missing:
        raise ServiceRegistryError(f"{where}: no prefetch template for key(s) "
                                   f"{', '.join(missing)} (known: {', '.join(sorted(templates))})")
    for name in ("title", "description"):
        if not text.get(name):
            raise ServiceRegistryError(f"{where}: no {name} in the rules' service text")
    return Service(id=declaration.id, hook=declaration.hook, title=text["title"],
                   description=text["description"],
                   prefetch={key: templates[key] for key in declaration.prefetch},
                   evaluator=declaration.evaluator)


class ServiceRegistry:
    """The resolved services by id, in declaration order."""

    def __init__(self, services: Iterable[Service]):
        self._by_id: dict[str, Service] = {}
        for service in services:
            if service.id in self._by_id:
                raise ServiceRegistryError(f"service {service.id!r} is declared twice")
            self._by_id[service.id] = service

    def __contains__(self, service_id: object) -> bool:
        return service_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __getitem__(self, service_id: str) -> Service:
        return self._by_id[service_id]

    def get(self, service_id: str) -> Service:
        """The service, or NotFound (404) naming the id."""
        try:
            return self._by_id[service_id]
        except KeyError:
            raise NotFound(Issue(f"No CDS service with id {service_id!r}. "
                                 f"GET /cds-services lists the services.", code="not-found")) from None

    def discovery(self) -> dict[str, Any]:
        """The CDS Hooks 2.0 discovery document."""
        return {"services": [s.definition() for s in self._by_id.values()]}
