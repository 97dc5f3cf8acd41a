"""Card text of values that are not exact numbers: a comparator stays beside its value, and a
result that could not be classified is never called "not measured"."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from cds.cards.builder import build_cards
from cds.config import Config
from cds.clinical.evaluate import evaluate
from cds.clinical.facts import Measurement, PatientFacts
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def m(kind, value, unit, **kw):
    when = datetime.combine(AS_OF - timedelta(days=10), datetime.min.time(), timezone.utc)
    return Measurement(kind=kind, value=float(value), unit=unit, when=when, code=f"test|{kind}",
                       display=kind, original_value=float(value), original_unit=unit, **kw)


def test_a_mass_reported_with_a_comparator_is_shown_with_it(rules):
    """ASM sent as "<12.3 kg" is low for a woman (< 15 kg); the summary must not turn it into
    an exact "12.3 kg"."""
    data = [m("grip-strength", 10, "kg", laterality="left"),
            m("appendicular-lean-mass", 12.3, "kg", comparator="<")]
    f = PatientFacts(patient_id="p1", as_of=AS_OF, gender="female", birth_date=date(1950, 1, 1),
                     measurements={x.kind: [x] for x in data})
    (card,) = [c for c in build_cards(evaluate(f, rules), f, rules)
               if c["source"]["topic"]["code"] == "sarcopenia-confirmed"]
    assert "ASM <12.3 kg" in card["summary"], card["summary"]


def test_probable_sarcopenia_with_an_unclassifiable_mass_does_not_say_mass_was_not_measured(rules):
    data = [m("grip-strength", 10, "kg", laterality="left"),
            m("appendicular-lean-mass-index", 6.0, "kg/m2", comparator="<")]
    f = PatientFacts(patient_id="p1", as_of=AS_OF, gender="female", birth_date=date(1950, 1, 1),
                     measurements={x.kind: [x] for x in data})
    (card,) = [c for c in build_cards(evaluate(f, rules), f, rules)
               if c["source"]["topic"]["code"] == "sarcopenia-probable"]
    assert "cannot be classified" in card["detail"]
    assert "not been measured" not in card["detail"], card["detail"]
