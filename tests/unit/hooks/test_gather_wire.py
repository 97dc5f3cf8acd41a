"""Wire schemas as the gather stage relies on them: what a request may carry, how problems are named."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from cds.hooks import wire
from cds.errors import BadRequest


def req(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                            "context": {"userId": "Practitioner/1", "patientId": "p1"}}
    body.update(over)
    return body


def named(body: Any) -> set[str]:
    with pytest.raises(BadRequest) as err:
        wire.load_hook_request(body, "patient-view")
    assert all(i.diagnostics for i in err.value.issues)
    return {i.expression for i in err.value.issues}


def test_valid_request_loads_with_empty_prefetch_default():
    data = wire.load_hook_request(req(), "patient-view")
    assert data["prefetch"] == {}


@pytest.mark.parametrize("value", [None, {"resourceType": "Patient", "id": "p1"},
                                   {"resourceType": "OperationOutcome", "issue": []},
                                   {"resourceType": "Bundle", "type": "searchset"}])
def test_prefetch_values_accepted(value):
    assert wire.load_hook_request(req(prefetch={"k": value}), "patient-view")["prefetch"]["k"] == value


def test_prefetch_values_rejected_name_their_key():
    assert named(req(prefetch={"a": [1], "b": {"id": "x"}, "c": "text", "ok": None})) == {
        "prefetch.a", "prefetch.b", "prefetch.c"}


def test_prefetch_key_characters():
    assert "prefetch" in {e.split(".")[0] for e in named(req(prefetch={"bad key!": None}))}


def test_fhir_authorization_needs_fhir_server_and_a_bearer_token():
    auth = {"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "x"}
    assert named(req(fhirAuthorization=auth)) == {"fhirServer"}
    bad = {**auth, "token_type": "MAC", "expires_in": "300"}
    assert named(req(fhirServer="http://h/fhir", fhirAuthorization=bad)) == {
        "fhirAuthorization.token_type", "fhirAuthorization.expires_in"}


@pytest.mark.parametrize("server", ["ftp://h/fhir", "not a url", "javascript:alert(1)", ""])
def test_fhir_server_must_be_http_url(server):
    assert named(req(fhirServer=server)) == {"fhirServer"}


def test_wrong_hook_is_named_first_even_when_other_things_are_wrong():
    body = req(hook="order-sign", hookInstance="nope", prefetch={"x": 1})
    with pytest.raises(BadRequest) as err:
        wire.load_hook_request(body, "patient-view")
    assert err.value.issues[0].expression == "hook"
    assert {i.expression for i in err.value.issues} == {"hook", "hookInstance", "prefetch.x"}


def test_envelope_and_context_problems_come_together():
    body = req(hookInstance="nope")
    body["context"]["patientId"] = "Patient/p1"
    assert named(body) == {"hookInstance", "context.patientId"}


def test_not_an_object():
    assert named([1, 2]) == {None}


def test_spec_valid_card_without_uuid_is_accepted_on_the_wire_but_not_from_us():
    card = {"summary": "s", "indicator": "info", "source": {"label": "l"}}
    assert wire.CardSchema().validate(card) == {}
    with pytest.raises(wire.WireError, match="uuid"):
        wire.check_card(card)
    with pytest.raises(wire.WireError, match="suggestions"):
        wire.check_response({"cards": [{**card, "uuid": str(uuid.uuid4()), "selectionBehavior": "any",
                                        "suggestions": [{"label": "x"}]}]})
    wire.check_response({"cards": [{**card, "uuid": str(uuid.uuid4())}]})


def test_empty_values_never_leave():
    card = {"summary": "s", "indicator": "info", "source": {"label": "l", "url": "https://x.org"},
            "uuid": str(uuid.uuid4()), "detail": ""}
    with pytest.raises(wire.WireError):
        wire.check_card(card)


def test_envelope_only_check_still_guards_the_envelope():
    """check_response(cards_checked=True) skips re-validating cards (build_cards checked each
    one) but not the envelope around them."""
    card = {"uuid": str(uuid.uuid4()), "summary": "s", "indicator": "info", "source": {"label": "l"}}
    wire.check_response({"cards": [card]}, cards_checked=True)
    wire.check_response({"cards": []}, cards_checked=True)
    for bad in ({"cards": [card], "unexpected": 1}, {"cards": [card], "systemActions": []},
                {"cards": "not a list"}):
        with pytest.raises(wire.WireError):
            wire.check_response(bad, cards_checked=True)


def test_engine_checks_every_card_it_builds(monkeypatch):
    """With MSKCDS_CHECK_CARDS on (the test suite) and the response check reduced to the
    envelope, each card goes through wire.check_card exactly once on its way out (in
    cards.build_card); with the production default, not at all (start-up checked templates)."""
    import json
    from pathlib import Path

    from cds.cards import builder as cards_mod
    from cds.config import Config
    from cds.engine import Engine

    example = (Path(__file__).resolve().parents[3] / "fhir_examples"
               / "osteosarcopenia.request.json")
    engine = Engine(Config.from_env({"require_auth": False, "check_cards": True}, environ={}))
    checked: list[str] = []
    real = wire.check_card

    def recording(card):
        real(card)
        checked.append(card["uuid"])

    monkeypatch.setattr(cards_mod.wire, "check_card", recording)
    cards = engine.call("bone-muscle-health", json.loads(example.read_text())).response["cards"]
    assert cards and sorted(checked) == sorted(c["uuid"] for c in cards)

    checked.clear()
    default = Engine(Config.from_env({"require_auth": False}, environ={}))
    assert default.config.check_cards is False
    cards = default.call("bone-muscle-health", json.loads(example.read_text())).response["cards"]
    assert cards and checked == []
