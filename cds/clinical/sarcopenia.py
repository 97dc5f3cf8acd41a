"""Sarcopenia by the configured profile's cut-offs (rules/sarcopenia.yaml): low strength (grip),
then low muscle quantity (ASM, ASM index or ALM/BMI), then low performance (gait speed).

Each of the three is assessed to one state: low, normal, unknown (cannot be classified
without a guess) or absent (not on record). "Measured but unusable" is unknown, never absent.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import timedelta

from cds.clinical.common import day_values, future, known_age_at_least, make_finding, unread_since, usable
from cds.clinical.facts import Measurement, PatientFacts
from cds.clinical.findings import Applied, Finding, MassValue, SarcopeniaVariables
from cds.knowledge.intervals import Criterion
from cds.knowledge.rules import Rules
from cds.knowledge.sarcopenia import SarcopeniaRules
from cds.knowledge.vocabulary import Code, Flag, Kind, Measure

LOW, NORMAL, UNKNOWN, ABSENT = "low", "normal", "unknown", "absent"
_DAY = timedelta(days=1)
_MASS_KINDS = (Kind.APPENDICULAR_LEAN_MASS, Kind.APPENDICULAR_LEAN_MASS_INDEX)
# every kind a muscle-mass measure is computed from
_MASS_INPUTS = _MASS_KINDS + (Kind.BODY_HEIGHT, Kind.BODY_WEIGHT, Kind.BMI)
# results that are not read once older than rules.sarcopenia.max_result_age_days (height,
# weight and BMI are only inputs of a lean-mass result that is itself recent)
_AGEING_KINDS = (Kind.GRIP_STRENGTH, Kind.GAIT_SPEED) + _MASS_KINDS


@dataclass(frozen=True)
class Grip:
    state: str
    criterion: Criterion
    values: list[Measurement]          # the latest day's hands


@dataclass(frozen=True)
class Mass:
    state: str
    measures: list[MassValue]


@dataclass(frozen=True)
class Gait:
    state: str
    criterion: Criterion
    value: Measurement | None          # None when absent or unknown


def evaluate_sarcopenia(facts: PatientFacts, rules: Rules) -> Finding | None:
    s = rules.sarcopenia
    sex = facts.gender
    if sex not in ("male", "female"):
        return None   # every cut-off is sex-specific
    if not known_age_at_least(facts, s.min_age):
        return None   # adult cut-offs: a child, or age unknown, is never labelled
    facts, old = recent_only(facts, s.max_result_age_days)
    grip = assess_grip(facts, s.grip.for_sex(sex))
    mass = assess_mass(facts, s, sex)
    gait = assess_gait(facts, s.gait.for_sex(sex))
    decided = decide(facts, grip, mass, gait)
    if decided is None:
        return None
    code, flags = decided
    if grip.state == ABSENT and Kind.GRIP_STRENGTH in old:
        flags.add(Flag.GRIP_OLD)
    if mass.state == ABSENT and old.intersection(_MASS_KINDS):
        flags.add(Flag.MASS_OLD)
    if Flag.GAIT_NOT_MEASURED in flags and Kind.GAIT_SPEED in old:
        flags.discard(Flag.GAIT_NOT_MEASURED)
        flags.add(Flag.GAIT_OLD)
    return _finding(facts, rules, s, sex, code, flags, grip, mass, gait)


def recent_only(facts: PatientFacts, max_days: int) -> tuple[PatientFacts, set[str]]:
    """``facts`` without grip, lean-mass and gait results older than ``max_days`` (a result
    from then says little about the muscle now), and the kinds that had such results. An
    unusable result that old no longer makes its kind unknown either."""
    cutoff = facts.as_of - timedelta(days=max_days)
    measurements = dict(facts.measurements)
    unusable, unusable_latest = dict(facts.unusable), dict(facts.unusable_latest)
    old: set[str] = set()
    for kind in _AGEING_KINDS:
        values = facts.measurements.get(kind, [])
        kept = [m for m in values if m.day >= cutoff]
        if len(kept) < len(values):
            old.add(kind)
            measurements[kind] = kept
        last = unusable_latest.get(kind)
        if last is not None and last < cutoff:
            old.add(kind)
            unusable.pop(kind, None)
            unusable_latest.pop(kind)
    if not old:
        return facts, old
    return dataclasses.replace(facts, measurements=measurements, unusable=unusable,
                               unusable_latest=unusable_latest), old


def decide(facts: PatientFacts, grip: Grip, mass: Mass, gait: Gait) -> tuple[str, set[str]] | None:
    """The finding code and its flags, or None: normal grip, low grip with normal measured mass,
    low mass with normal measured grip, or values that cannot be classified: no card."""
    flags: set[str] = set()
    if grip.state == ABSENT and mass.state == LOW:
        return Code.LOW_MUSCLE_MASS, flags
    if grip.state == LOW and mass.state == LOW:
        if gait.state == ABSENT and not facts.unusable.get(Kind.GAIT_SPEED):
            flags.add(Flag.GAIT_NOT_MEASURED)   # (sent but unusable is not "not on record")
        code = Code.SARCOPENIA_SEVERE if gait.state == LOW else Code.SARCOPENIA_CONFIRMED
        return code, flags
    if grip.state == LOW and mass.state in (ABSENT, UNKNOWN):
        if mass.state == UNKNOWN:
            flags.add(Flag.MASS_INDETERMINATE)
        return Code.SARCOPENIA_PROBABLE, flags
    return None


def _finding(facts: PatientFacts, rules: Rules, s: SarcopeniaRules, sex: str, code: str,
             flags: set[str], grip: Grip, mass: Mass, gait: Gait) -> Finding:
    probable = code == Code.SARCOPENIA_PROBABLE
    masses = _shown_masses(mass, probable)
    # gait speed is shown for confirmed and severe sarcopenia
    shown_gait = gait.value if code in (Code.SARCOPENIA_SEVERE, Code.SARCOPENIA_CONFIRMED) else None
    evidence, criteria = _grip_rows(grip)
    for mv in masses:
        evidence += mv.sources
        criteria.append(Applied(mv.measure, mv.criterion, mv.unit, mv.state))
    citations = [s.citation, grip.criterion.citation] + [mv.criterion.citation for mv in mass.measures]
    if shown_gait is not None:
        evidence.append(shown_gait)
        criteria.append(Applied(Kind.GAIT_SPEED, gait.criterion, shown_gait.unit, gait.state))
        citations.append(gait.criterion.citation)
    derived = [] if probable else [mv for mv in masses if mv.computed and mv.value is not None]
    best_grip = max(grip.values, key=lambda m: m.value) if grip.values else None
    variables = SarcopeniaVariables(
        date=max((m.day for m in evidence), default=facts.as_of), profile=s.label, sex=sex,
        grip=best_grip, mass=tuple(mv for mv in mass.measures if mv.state == LOW), gait=shown_gait)
    return make_finding(rules, code, variables, facts=facts, evidence=evidence, flags=flags,
                        citations=citations, criteria=criteria, derived=derived)


def _shown_masses(mass: Mass, probable: bool) -> list[MassValue]:
    """The mass measures a card shows: those on record, except that probable sarcopenia
    (which has no usable mass) shows only the ones that were there but unknown."""
    if probable:
        return [mv for mv in mass.measures if mv.state == UNKNOWN]
    return [mv for mv in mass.measures if mv.state != ABSENT]


def _grip_rows(grip: Grip) -> tuple[list[Measurement], list[Applied]]:
    if not grip.values:
        return [], []
    return list(grip.values), [Applied(Kind.GRIP_STRENGTH, grip.criterion, grip.values[0].unit,
                                       grip.state)]


# --------------------------------------------------------------------------- strength
def assess_grip(facts: PatientFacts, criterion: Criterion) -> Grip:
    """Grip: the latest measurement date's values; the best hand counts (so grip is low only
    when every hand measured that day is low, and normal when any hand is normal)."""
    grips = usable(facts, Kind.GRIP_STRENGTH)
    same_day = [m for m in grips if m.day == grips[0].day] if grips else []
    states = [state(criterion, m.value, m.comparator) for m in same_day]
    if not same_day:
        # "Measured but unusable" (odd unit, no date...) is not "not measured": it may have
        # been normal, so it is unknown (no low-muscle-mass card saying strength was never measured).
        grip_state = UNKNOWN if facts.unusable.get(Kind.GRIP_STRENGTH) else ABSENT
    elif NORMAL in states:
        grip_state = NORMAL
    else:
        grip_state = LOW if all(x == LOW for x in states) else UNKNOWN
    if future(facts, Kind.GRIP_STRENGTH):
        grip_state = UNKNOWN
    # a newer (or same-day) result that could not be read: the usable one may not be current
    # (same day: any normal hand still makes grip normal)
    if same_day and unread_since(facts, Kind.GRIP_STRENGTH, same_day[0].day) and (
            grip_state == LOW or unread_since(facts, Kind.GRIP_STRENGTH, same_day[0].day + _DAY)):
        grip_state = UNKNOWN
    return Grip(grip_state, criterion, same_day)


# --------------------------------------------------------------------------- performance
def assess_gait(facts: PatientFacts, criterion: Criterion) -> Gait:
    gaits = day_values(facts, Kind.GAIT_SPEED)
    if not gaits:
        return Gait(UNKNOWN if future(facts, Kind.GAIT_SPEED) else ABSENT, criterion, None)
    if len({state(criterion, g.value, g.comparator) for g in gaits}) > 1:
        return Gait(UNKNOWN, criterion, None)   # slow and not slow on one day: severity unknown
    if future(facts, Kind.GAIT_SPEED) or unread_since(facts, Kind.GAIT_SPEED, gaits[0].day):
        return Gait(UNKNOWN, criterion, None)
    return Gait(state(criterion, gaits[0].value, gaits[0].comparator), criterion, gaits[0])


# --------------------------------------------------------------------------- muscle quantity
def assess_mass(facts: PatientFacts, s: SarcopeniaRules, sex: str) -> Mass:
    masses = [mass_measure(facts, measure, cut.for_sex(sex)) for measure, cut in s.mass]
    mass_state = combine_mass(masses)
    if mass_state == ABSENT and any(facts.unusable.get(k) for k in _MASS_KINDS):
        mass_state = UNKNOWN   # measured but unusable: unknown, not absent
    if any(future(facts, k) for k in _MASS_KINDS):
        mass_state = UNKNOWN
    latest = max((mv.day for mv in masses if mv.day), default=None)
    if mass_state in (LOW, NORMAL) and any(unread_since(facts, k, latest) for k in _MASS_KINDS):
        mass_state = UNKNOWN
    return Mass(mass_state, masses)


def state(criterion: Criterion, value: float, comparator: str | None) -> str:
    relation = criterion.interval.relation(value, comparator)
    return {"inside": LOW, "outside": NORMAL}.get(relation, UNKNOWN)


def mass_measure(facts: PatientFacts, measure: str, criterion: Criterion) -> MassValue:
    """One mass measure from the latest values (the first combination below). Several values
    of an input on its latest day (two ASM results, two heights) that would classify the
    measure differently make it unknown: which one is right would be a guess."""
    options: list[list[Measurement | None]] = [list(day_values(facts, kind)) or [None]
                                               for kind in _MASS_INPUTS]
    first: MassValue | None = None
    states: set[str] = set()
    for combo in itertools.islice(itertools.product(*options), 256):
        mv = mass_from(dict(zip(_MASS_INPUTS, combo)), measure, criterion)
        first = first or mv
        states.add(mv.state)
    assert first is not None
    return first if len(states) == 1 else dataclasses.replace(first, state=UNKNOWN)


def _result(measure: str, criterion: Criterion, value: float | None, unit: str,
            sources: tuple[Measurement, ...], computed: bool, comparator: str | None = None,
            fixed_state: str | None = None) -> MassValue:
    if fixed_state is None:
        fixed_state = ABSENT if value is None else state(criterion, value, comparator)
    day = max((m.day for m in sources), default=None)
    return MassValue(measure, value, unit, fixed_state, day, sources, computed, criterion,
                     comparator or None)


def mass_from(latest: dict[str, Measurement | None], measure: str, criterion: Criterion) -> MassValue:
    if measure == Measure.ASM:
        asm = latest[Kind.APPENDICULAR_LEAN_MASS]
        if asm is None:
            return _result(measure, criterion, None, "kg", (), False)
        return _result(measure, criterion, asm.value, "kg", (asm,), False, asm.comparator)
    if measure == Measure.ASM_INDEX:
        return _asm_index(latest, criterion)
    if measure == Measure.ALM_BMI:
        return _alm_bmi(latest, criterion)
    raise ValueError(f"unknown mass measure {measure!r}")  # guarded by the rules schema


def _asm_index(latest: dict[str, Measurement | None], criterion: Criterion) -> MassValue:
    measure = Measure.ASM_INDEX
    sent = latest[Kind.APPENDICULAR_LEAN_MASS_INDEX]
    if sent is not None:
        return _result(measure, criterion, sent.value, "kg/m2", (sent,), False, sent.comparator)
    asm, height = latest[Kind.APPENDICULAR_LEAN_MASS], latest[Kind.BODY_HEIGHT]
    if asm is None or height is None:
        return _result(measure, criterion, None, "kg/m2", (), True)
    if asm.comparator or height.comparator or height.value <= 0:
        return _result(measure, criterion, None, "kg/m2", (asm, height), True, fixed_state=UNKNOWN)
    return _result(measure, criterion, asm.value / height.value ** 2, "kg/m2", (asm, height), True)


def _alm_bmi(latest: dict[str, Measurement | None], criterion: Criterion) -> MassValue:
    measure = Measure.ALM_BMI
    asm = latest[Kind.APPENDICULAR_LEAN_MASS]
    if asm is None:
        return _result(measure, criterion, None, "m2", (), True)
    bmi = latest[Kind.BMI]
    sources: tuple[Measurement, ...]
    if bmi is not None:
        sources, bmi_value, odd = (asm, bmi), bmi.value, bool(bmi.comparator)
    else:
        weight, height = latest[Kind.BODY_WEIGHT], latest[Kind.BODY_HEIGHT]
        if weight is None or height is None:
            return _result(measure, criterion, None, "m2", (), True)
        sources = (asm, weight, height)
        odd = bool(weight.comparator or height.comparator) or height.value <= 0
        bmi_value = weight.value / height.value ** 2 if not odd else 0.0
    if odd or asm.comparator or bmi_value <= 0:
        return _result(measure, criterion, None, "m2", sources, True, fixed_state=UNKNOWN)
    return _result(measure, criterion, asm.value / bmi_value, "m2", sources, True)


def combine_mass(masses: list[MassValue]) -> str:
    states = [mv.state for mv in masses]
    for candidate in (LOW, UNKNOWN, NORMAL):
        if candidate in states:
            return candidate
    return ABSENT
