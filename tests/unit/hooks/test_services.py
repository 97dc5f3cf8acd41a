"""The service registry (cds.hooks.services): discovery lists what is declared, a call is
answered by the evaluator a declaration names, and a declaration that cannot be served
stops start-up naming what is missing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds.config import Config
from cds.engine import Engine
from cds.errors import NotFound
from cds.hooks.services import SERVICES, ServiceDeclaration, ServiceRegistryError
from cds.knowledge.rules import load_rules

EXAMPLES = Path(__file__).resolve().parents[3] / "fhir_examples"


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.from_env({"require_auth": False}, environ={})


@pytest.fixture(scope="module")
def rules(config):
    return load_rules(config)


def _request(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.request.json").read_text(encoding="utf-8"))


def _summaries(response: dict) -> list[str]:
    return [card["summary"] for card in response["cards"]]


def test_discovery_lists_the_declared_services_in_order(config, rules):
    engine = Engine(config, rules=rules)
    listed = engine.discovery()["services"]
    assert [s["id"] for s in listed] == [d.id for d in SERVICES]
    for declared, shown in zip(SERVICES, listed):
        assert shown["hook"] == declared.hook
        assert list(shown["prefetch"]) == list(declared.prefetch)
        assert shown["title"] and shown["description"]
    assert list(engine.services) == [d.id for d in SERVICES]


def test_a_second_declaration_is_listed_and_answered_by_its_evaluator(config, rules):
    extra = ServiceDeclaration(id="bone-muscle-health-lite", hook="patient-view",
                               evaluator="patient-record", prefetch=("patient", "observations"))
    engine = Engine(config, rules=rules, declarations=(*SERVICES, extra))
    listed = {s["id"]: s for s in engine.discovery()["services"]}
    assert list(listed) == ["bone-muscle-health", "bone-health-order-select", "bone-health-order-sign",
                            "bone-muscle-health-lite"]
    assert set(listed["bone-muscle-health-lite"]["prefetch"]) == {"patient", "observations"}
    assert listed["bone-muscle-health-lite"]["prefetch"]["observations"] == \
        listed["bone-muscle-health"]["prefetch"]["observations"]
    request = _request("osteosarcopenia")
    full = engine.call("bone-muscle-health", request).response
    lite = engine.call("bone-muscle-health-lite", request)
    assert lite.service_id == "bone-muscle-health-lite" and lite.hook == "patient-view"
    assert _summaries(lite.response) == _summaries(full)  # same evaluator, same data
    assert lite.response["cards"]


@pytest.mark.parametrize("declaration, message", [
    (ServiceDeclaration(id="x", hook="order-dispatch", evaluator="patient-record",
                        prefetch=("patient",)),
     "hook 'order-dispatch' has no context schema"),
    (ServiceDeclaration(id="x", hook="patient-view", evaluator="nothing", prefetch=("patient",)),
     "no evaluator named 'nothing'"),
    (ServiceDeclaration(id="x", hook="patient-view", evaluator="patient-record",
                        prefetch=("patient", "allergies")),
     "no prefetch template for key(s) allergies"),
    (ServiceDeclaration(id="x/y", hook="patient-view", evaluator="patient-record",
                        prefetch=("patient",)),
     "the id may hold only"),
])
def test_a_declaration_that_cannot_be_served_stops_start_up(config, rules, declaration, message):
    with pytest.raises(ServiceRegistryError) as caught:
        Engine(config, rules=rules, declarations=(declaration,))
    assert message in str(caught.value)
    assert repr(declaration.id) in str(caught.value)


def test_a_service_declared_twice_stops_start_up(config, rules):
    with pytest.raises(ServiceRegistryError, match="'bone-muscle-health' is declared twice"):
        Engine(config, rules=rules, declarations=(*SERVICES, *SERVICES))


def test_an_undeclared_service_is_not_found(config, rules):
    engine = Engine(config, rules=rules)
    with pytest.raises(NotFound) as caught:
        engine.call("vitamin-d-only", _request("osteosarcopenia"))
    assert caught.value.status == 404
    assert "'vitamin-d-only'" in caught.value.issues[0].diagnostics
