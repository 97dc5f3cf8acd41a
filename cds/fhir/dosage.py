"""FHIR R4 ``Dosage`` / ``dispenseRequest`` → how much per day, for how long.

Reads a MedicationRequest's ``dosageInstruction`` and ``dispenseRequest`` the way
the spec defines them, and says so when it cannot: a dose given as a range, an
as-needed order, a timing without a period, a frequency range, an unknown unit,
several dosage lines whose order is not stated. Nothing here guesses a number; an
unreadable plan has ``problem`` set (a short reason, no patient data) and the
clinical rules then give no card.

Units (dose units and units of time) are knowledge kept in rules/orders.yaml and
passed in: ``dose_units`` maps a UCUM code to (dimension, factor to the
dimension's base unit: mg for mass, IU, mL for volume, one for a count of
product units), ``time_units`` maps a FHIR UnitsOfTime / UCUM code to days.
"""
from __future__ import annotations

from datetime import date
from typing import Any, Mapping

from cds.clinical.drafts import DosagePlan, Phase
from cds.knowledge.orders import DIMENSIONS, DoseUnit

#: The dimensions a dose can be in (base units: mg, IU, mL, one product unit).
MASS, IU, VOLUME, COUNT = DIMENSIONS


class _Unreadable(Exception):
    pass


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _quantity_days(q: Any, time_units: Mapping[str, float]) -> float:
    if not isinstance(q, Mapping):
        raise _Unreadable("duration is not a Quantity")
    value = _number(q.get("value"))
    unit = q.get("code") if isinstance(q.get("code"), str) else q.get("unit")
    if value is None or value < 0 or not isinstance(unit, str) or unit not in time_units:
        raise _Unreadable("duration value or unit not usable")
    if q.get("comparator") is not None:
        raise _Unreadable("duration given with a comparator")
    return value * time_units[unit]


def _fhir_date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _dose(dosage: Mapping[str, Any], dose_units: Mapping[str, DoseUnit]) -> tuple[float, str]:
    """The amount per administration, in the base unit of its dimension."""
    rates = dosage.get("doseAndRate")
    if rates is None:
        raise _Unreadable("no dose")
    if not isinstance(rates, list):
        raise _Unreadable("doseAndRate is not a list")
    doses: list[tuple[float, str]] = []
    for entry in rates:
        if not isinstance(entry, Mapping):
            raise _Unreadable("doseAndRate entry is not an object")
        if "doseRange" in entry:
            raise _Unreadable("dose given as a range")
        if any(k.startswith("rate") for k in entry):
            raise _Unreadable("dose given as a rate")
        q = entry.get("doseQuantity")
        if q is None:
            continue
        if not isinstance(q, Mapping):
            raise _Unreadable("doseQuantity is not a Quantity")
        value = _number(q.get("value"))
        if value is None or value <= 0:
            raise _Unreadable("dose value not usable")
        if q.get("comparator") is not None:
            raise _Unreadable("dose given with a comparator")
        code = q.get("code")
        if code is None and q.get("unit") is None:
            unit = dose_units.get("1")  # a bare number: product units (tablets, capsules)
        elif isinstance(code, str):
            unit = dose_units.get(code)
        else:
            unit = None
        if unit is None:
            raise _Unreadable("dose unit not recognised")
        doses.append((value * unit.factor, unit.dimension))
    if not doses:
        raise _Unreadable("no dose")
    if len(set(doses)) > 1:
        raise _Unreadable("several different doses in one dosage line")
    return doses[0]


def _per_day(repeat: Mapping[str, Any], time_units: Mapping[str, float]) -> float:
    """Administrations per day from Timing.repeat (frequency per period)."""
    if "frequencyMax" in repeat or "periodMax" in repeat:
        raise _Unreadable("frequency or period given as a range")
    period = _number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if period is None or period <= 0 or not isinstance(unit, str) or unit not in time_units:
        raise _Unreadable("timing has no usable period")
    frequency = repeat.get("frequency", 1)
    if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
        raise _Unreadable("timing frequency not usable")
    return frequency / (period * time_units[unit])


def _phase(dosage: Mapping[str, Any], dose_units: Mapping[str, DoseUnit],
           time_units: Mapping[str, float]) -> Phase:
    if dosage.get("asNeededBoolean") is True or "asNeededCodeableConcept" in dosage:
        raise _Unreadable("as-needed dosing")
    amount, dimension = _dose(dosage, dose_units)
    timing = dosage.get("timing")
    repeat = timing.get("repeat") if isinstance(timing, Mapping) else None
    if not isinstance(repeat, Mapping):
        raise _Unreadable("no timing.repeat")
    times_per_day = _per_day(repeat, time_units)
    days: float | None = None
    if "boundsDuration" in repeat:
        days = _quantity_days(repeat["boundsDuration"], time_units)
    elif "boundsPeriod" in repeat:
        period = repeat["boundsPeriod"]
        start = _fhir_date(period.get("start")) if isinstance(period, Mapping) else None
        end = _fhir_date(period.get("end")) if isinstance(period, Mapping) else None
        if start is not None and end is not None:
            if end < start:
                raise _Unreadable("boundsPeriod ends before it starts")
            days = float((end - start).days + 1)   # a date-only end means the end of that day
    elif "boundsRange" in repeat:
        raise _Unreadable("duration given as a range")
    if days is None and repeat.get("count") is not None:
        count = repeat.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1 or "countMax" in repeat:
            raise _Unreadable("timing count not usable")
        days = count / times_per_day
    return Phase(per_day=amount * times_per_day, dimension=dimension, days=days)


def _supply_days(dispense: Any, time_units: Mapping[str, float]) -> float | None:
    if not isinstance(dispense, Mapping) or "expectedSupplyDuration" not in dispense:
        return None
    try:
        days = _quantity_days(dispense["expectedSupplyDuration"], time_units)
    except _Unreadable:
        return None
    repeats = dispense.get("numberOfRepeatsAllowed", 0)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
        return None
    return days * (1 + repeats)


def read_plan(order: Mapping[str, Any], dose_units: Mapping[str, DoseUnit],
              time_units: Mapping[str, float]) -> DosagePlan:
    """The dosage plan of one MedicationRequest (a JSON object)."""
    supply = _supply_days(order.get("dispenseRequest"), time_units)
    lines = order.get("dosageInstruction")
    if not isinstance(lines, list) or not lines:
        return DosagePlan(supply_days=supply, problem="no dosage instruction")
    try:
        if not all(isinstance(d, Mapping) for d in lines):
            raise _Unreadable("dosage instruction is not an object")
        if len(lines) > 1 and any(not isinstance(d.get("sequence"), int) for d in lines):
            raise _Unreadable("several dosage lines without a sequence")
        groups: dict[int, list[Phase]] = {}
        for d in lines:
            groups.setdefault(int(d.get("sequence", 1)), []).append(_phase(d, dose_units, time_units))
        phases = []
        for _, items in sorted(groups.items()):
            if len({p.dimension for p in items}) > 1:
                raise _Unreadable("concurrent dosage lines in different units")
            durations = {p.days for p in items}
            phases.append(Phase(per_day=sum(p.per_day for p in items), dimension=items[0].dimension,
                                days=durations.pop() if len(durations) == 1 else None))
    except _Unreadable as why:
        return DosagePlan(supply_days=supply, problem=str(why))
    return DosagePlan(phases=tuple(phases), supply_days=supply)



