"""The dosage reader: amount per day and duration from FHIR R4 Dosage, and every way it refuses."""
from __future__ import annotations

import copy
import json

import pytest

from cds.fhir.dosage import COUNT, IU, MASS, VOLUME, DoseUnit, read_plan

UNITS = {"mg": DoseUnit(MASS, 1.0), "ug": DoseUnit(MASS, 0.001), "g": DoseUnit(MASS, 1000.0),
         "[iU]": DoseUnit(IU, 1.0), "[IU]": DoseUnit(IU, 1.0), "mL": DoseUnit(VOLUME, 1.0),
         "{tbl}": DoseUnit(COUNT, 1.0), "{capsule}": DoseUnit(COUNT, 1.0), "1": DoseUnit(COUNT, 1.0)}
DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.4375, "a": 365.25}


def order(*lines, dispense=None):
    out = {"resourceType": "MedicationRequest", "dosageInstruction": list(lines)}
    if dispense is not None:
        out["dispenseRequest"] = dispense
    return out


def line(value, code, frequency=1, period=1, unit="d", **extra):
    repeat = {"frequency": frequency, "period": period, "periodUnit": unit}
    repeat.update(extra.pop("repeat", {}))
    d = {"timing": {"repeat": repeat},
         "doseAndRate": [{"doseQuantity": {"value": value, "unit": code, "system": "http://unitsofmeasure.org",
                                           "code": code}}]}
    d.update(extra)
    return d


@pytest.mark.parametrize("dose,code,freq,period,unit,per_day,dim", [
    (50000, "[iU]", 1, 1, "wk", 50000 / 7, IU),        # weekly stoss course
    (4000, "[iU]", 1, 1, "d", 4000, IU),
    (2000, "[IU]", 2, 1, "d", 4000, IU),               # twice daily
    (100, "ug", 1, 1, "d", 0.1, MASS),                 # 100 µg = 0.1 mg
    (1.25, "mg", 1, 2, "wk", 1.25 / 14, MASS),         # every two weeks
    (5, "mg", 1, 12, "h", 10, MASS),                   # every 12 hours
    (1, "{tbl}", 3, 1, "d", 3, COUNT),
    (5, "mL", 1, 1, "d", 5, VOLUME),
    (1, "[iU]", 1, 1, "mo", 1 / 30.4375, IU),
])
def test_amount_per_day(dose, code, freq, period, unit, per_day, dim):
    plan = read_plan(order(line(dose, code, freq, period, unit)), UNITS, DAYS)
    assert plan.readable, plan.problem
    assert plan.max_per_day == pytest.approx(per_day)
    assert plan.dimension == dim


def test_bare_number_is_product_units():
    d = line(2, "{tbl}")
    del d["doseAndRate"][0]["doseQuantity"]["unit"], d["doseAndRate"][0]["doseQuantity"]["code"]
    del d["doseAndRate"][0]["doseQuantity"]["system"]
    plan = read_plan(order(d), UNITS, DAYS)
    assert plan.max_per_day == 2 and plan.dimension == COUNT


@pytest.mark.parametrize("mutate,reason", [
    (lambda d: d.update(doseAndRate=[{"doseRange": {"low": {"value": 1}, "high": {"value": 2}}}]), "range"),
    (lambda d: d.update(asNeededBoolean=True), "as-needed"),
    (lambda d: d.update(asNeededCodeableConcept={"text": "pain"}), "as-needed"),
    (lambda d: d["timing"]["repeat"].update(frequencyMax=3), "range"),
    (lambda d: d["timing"]["repeat"].update(periodMax=8), "range"),
    (lambda d: d["timing"]["repeat"].pop("period"), "period"),
    (lambda d: d["timing"]["repeat"].update(periodUnit="fortnight"), "period"),
    (lambda d: d.pop("timing"), "timing"),
    (lambda d: d.pop("doseAndRate"), "no dose"),
    (lambda d: d["doseAndRate"][0]["doseQuantity"].update(code="tsp", unit="tsp"), "unit"),
    (lambda d: d["doseAndRate"][0]["doseQuantity"].update(value=-1), "value"),
    (lambda d: d["doseAndRate"][0]["doseQuantity"].update(value="5"), "value"),
    (lambda d: d["doseAndRate"][0]["doseQuantity"].update(comparator="<"), "comparator"),
    (lambda d: d.update(doseAndRate={"doseQuantity": {"value": 5, "code": "mg"}}), "not a list"),
    (lambda d: d["timing"]["repeat"].update(frequency=0), "frequency"),
    (lambda d: d["timing"]["repeat"].update(frequency=1.5), "frequency"),
    (lambda d: d["doseAndRate"].append({"doseQuantity": {"value": 10, "code": "mg"}}), "different doses"),
    (lambda d: d["doseAndRate"][0].update(rateQuantity={"value": 1, "code": "mg/h"}), "rate"),
])
def test_unreadable_doses_say_why(mutate, reason):
    d = line(5, "mg")
    mutate(d)
    plan = read_plan(order(d), UNITS, DAYS)
    assert not plan.readable and plan.max_per_day is None
    assert reason in plan.problem


def test_no_dosage_instruction():
    assert read_plan({"resourceType": "MedicationRequest"}, UNITS, DAYS).problem == "no dosage instruction"
    assert read_plan(order(), UNITS, DAYS).problem == "no dosage instruction"


@pytest.mark.parametrize("repeat,days", [
    ({"boundsDuration": {"value": 3, "unit": "months", "system": "http://unitsofmeasure.org", "code": "mo"}},
     3 * 30.4375),
    ({"boundsDuration": {"value": 12, "code": "wk"}}, 84),
    ({"boundsPeriod": {"start": "2026-01-01", "end": "2026-03-31"}}, 90),   # end day included
    ({"boundsPeriod": {"start": "2026-01-01T08:00:00Z", "end": "2026-04-01"}}, 91),
    ({"count": 90}, 90),                                                   # once daily x 90
])
def test_duration_from_bounds(repeat, days):
    plan = read_plan(order(line(5, "mg", repeat=repeat)), UNITS, DAYS)
    assert plan.phases[0].days == pytest.approx(days)
    assert plan.days_at_least(2.5) == pytest.approx(days)


def test_count_with_twice_daily_timing():
    plan = read_plan(order(line(5, "mg", frequency=2, repeat={"count": 60})), UNITS, DAYS)
    assert plan.phases[0].days == pytest.approx(30)


def test_open_bounds_period_is_unknown_duration():
    plan = read_plan(order(line(5, "mg", repeat={"boundsPeriod": {"start": "2026-01-01"}})), UNITS, DAYS)
    assert plan.readable and plan.phases[0].days is None and plan.days_at_least(2.5) is None


@pytest.mark.parametrize("repeat,why", [
    ({"boundsRange": {"low": {"value": 1, "code": "mo"}}}, "range"),
    ({"boundsDuration": {"value": 3, "code": "lunar"}}, "duration"),
    ({"boundsDuration": {"value": 3, "code": "mo", "comparator": ">"}}, "comparator"),
    ({"boundsPeriod": {"start": "2026-03-01", "end": "2026-01-01"}}, "before it starts"),
    ({"count": 0}, "count"),
])
def test_unusable_duration(repeat, why):
    plan = read_plan(order(line(5, "mg", repeat=repeat)), UNITS, DAYS)
    assert not plan.readable and why in plan.problem


def test_dispense_supply_with_repeats():
    plan = read_plan(order(line(5, "mg"), dispense={
        "numberOfRepeatsAllowed": 2,
        "expectedSupplyDuration": {"value": 30, "unit": "days", "system": "http://unitsofmeasure.org",
                                   "code": "d"}}), UNITS, DAYS)
    assert plan.supply_days == 90
    assert plan.phases[0].days is None
    assert plan.days_at_least(2.5) == 90
    assert plan.days_at_least(10) == 0.0   # 5 mg/day is never >= 10


def test_bounds_win_over_dispense():
    plan = read_plan(order(line(5, "mg", repeat={"boundsDuration": {"value": 14, "code": "d"}}),
                           dispense={"expectedSupplyDuration": {"value": 90, "code": "d"}}), UNITS, DAYS)
    assert plan.days_at_least(2.5) == 14


def test_taper_in_sequence():
    """20 mg for 2 weeks, then 10 mg for 2 weeks, then 2 mg for 10 weeks."""
    lines = [dict(line(20, "mg", repeat={"boundsDuration": {"value": 2, "code": "wk"}}), sequence=1),
             dict(line(10, "mg", repeat={"boundsDuration": {"value": 2, "code": "wk"}}), sequence=2),
             dict(line(2, "mg", repeat={"boundsDuration": {"value": 10, "code": "wk"}}), sequence=3)]
    plan = read_plan(order(*lines), UNITS, DAYS)
    assert [p.per_day for p in plan.phases] == [20, 10, 2]
    assert plan.max_per_day == 20
    assert plan.days_at_least(2.5) == 28
    assert plan.days_at_least(1) == 98


def test_concurrent_lines_with_the_same_sequence_add_up():
    morning = dict(line(10, "mg"), sequence=1)
    evening = dict(line(5, "mg"), sequence=1)
    plan = read_plan(order(morning, evening), UNITS, DAYS)
    assert plan.max_per_day == 15 and len(plan.phases) == 1


def test_several_lines_without_sequence_are_unreadable():
    plan = read_plan(order(line(10, "mg"), line(5, "mg")), UNITS, DAYS)
    assert "without a sequence" in plan.problem


def test_concurrent_lines_in_different_units_are_unreadable():
    plan = read_plan(order(dict(line(10, "mg"), sequence=1), dict(line(1, "{tbl}"), sequence=1)), UNITS, DAYS)
    assert "different units" in plan.problem


def test_the_spec_example_dosages_are_refused_not_guessed(shared_dir):
    base = shared_dir / "cds-hooks-spec" / "library-v1.0.1"
    for name in ("order-select-context-r4.json", "order-sign-context-r4.json", "order-sign-context-stu3.json"):
        doc = json.loads((base / name).read_text())
        for entry in doc["context"]["draftOrders"]["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "MedicationRequest":
                plan = read_plan(copy.deepcopy(res), UNITS, DAYS)
                # amoxicillin 5 mL twice daily: the R4 order-select example nests doseAndRate as an
                # object (R4 says a list); the order-sign one puts doseQuantity on the Dosage (STU3)
                assert plan.problem in ("doseAndRate is not a list", "no dose"), (name, plan)
