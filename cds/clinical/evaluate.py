"""PatientFacts + rules → findings.

Reads typed, unit-converted facts (cds.facts) and the loaded rules (cds.rules); knows
no threshold and no code of its own. Every decision that needs a value it does not
have (sex, age, a value reported only as "<25") is not made: no finding is built on a
guess. Each Finding carries what the card needs: the values it rests on (evidence),
the criteria applied with their citations, flags and the suggestion ids to offer.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Iterable

from cds.clinical.facts import Finding, Measurement, PatientFacts, age_on
from cds.knowledge.rules import Criterion, Interval, Rules

_SEVERITY = {"critical": 0, "warning": 1, "info": 2}
LOW, NORMAL, UNKNOWN, ABSENT = "low", "normal", "unknown", "absent"
_MASS_KINDS = ("appendicular-lean-mass", "appendicular-lean-mass-index")
_DAY = timedelta(days=1)
# every kind a muscle-mass measure is computed from
_MASS_INPUTS = _MASS_KINDS + ("body-height", "body-weight", "bmi")


def evaluate(facts: PatientFacts, rules: Rules) -> list[Finding]:
    findings: list[Finding] = []
    vitamin_d = _vitamin_d(facts, rules)
    if vitamin_d:
        findings.append(vitamin_d)
    bone = _bone(facts, rules)
    sarcopenia = _sarcopenia(facts, rules)
    combined = _osteosarcopenia(bone, sarcopenia, rules)
    if combined is not None:
        findings.append(combined)
    else:
        findings.extend(f for f in (bone, sarcopenia) if f is not None)
    screening = _dxa_screening(facts, rules)
    if screening:
        findings.append(screening)
    findings.sort(key=lambda f: _SEVERITY.get(f.indicator, 3))
    return findings


# =========================================================================== helpers
def _usable(facts: PatientFacts, kind: str) -> list[Measurement]:
    """Measurements of ``kind``, newest first, dated no later than "today" (a future date is
    odd data and never used)."""
    values = [m for m in facts.all(kind) if m.day <= facts.as_of]
    values.sort(key=lambda m: m.when, reverse=True)
    return values


def _future(facts: PatientFacts, kind: str, sites: Iterable[str] | None = None) -> bool:
    """A result of ``kind`` dated after "today" is on record (normalize keeps up to a day of
    clock skew). It is not read, but it is the newest result: reading an older one in its
    place would be a guess, so the caller treats the kind as unknown."""
    return any(m.day > facts.as_of and (sites is None or m.site in sites) for m in facts.all(kind))


def _unread_since(facts: PatientFacts, kind: str, day: date | None) -> bool:
    """A result of ``kind`` dated on or after ``day`` was sent but could not be used (odd unit,
    invalid...): the usable one from ``day`` may not be the latest, or not the whole picture."""
    last = facts.unusable_latest.get(kind)
    return last is not None and (day is None or last >= day)


def _any_condition(facts: PatientFacts, categories: Iterable[str]) -> bool:
    return any(facts.has_condition(c) for c in categories)


def _any_medication(facts: PatientFacts, categories: Iterable[str]) -> bool:
    return any(facts.has_medication(c) for c in categories)


def _taking(facts: PatientFacts, categories: Iterable[str]) -> bool:
    """A medication the patient may be taking now: status current (rules/data_quality.yaml) or
    not stated. A completed or stopped course is history, not a reason to withhold a new one."""
    return any(med.current or med.status is None
               for c in categories for med in facts.medications.get(c, ()))


def _known_age_at_least(facts: PatientFacts, years: int) -> bool:
    """The patient is certainly at least ``years`` old today (a full or partial birthDate)."""
    if facts.birth_date is not None:
        return age_on(facts.birth_date, facts.as_of) >= years
    span = facts.age_range
    return span is not None and span[0] >= years


def _criterion(what: str, criterion: Criterion, unit: str, result: str) -> dict[str, Any]:
    return {"what": what, "criterion": criterion, "unit": unit, "result": result}


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _finding(rules: Rules, code: str, *, evidence: Iterable[Measurement], flags: set[str],
             citations: Iterable[str], indicator: str | None = None, **variables: Any) -> Finding:
    card = rules.cards.findings[code]
    problem = card.get("problem_category")
    if problem and variables.get("facts") is not None and variables["facts"].has_condition(problem):
        flags = flags | {"on-problem-list"}
    variables.pop("facts", None)
    flags_frozen = frozenset(flags)
    return Finding(code=code, indicator=indicator or card["indicator"],
                   evidence=tuple(dict.fromkeys(evidence)),
                   variables={**variables, "flags": flags_frozen, "citations": _unique(citations)},
                   suggestions=rules.suggestions_for(code, flags_frozen))


# =========================================================================== vitamin D
def _vitamin_d(facts: PatientFacts, rules: Rules) -> Finding | None:
    vd = rules.vitamin_d
    values = _usable(facts, vd.kind)
    if not values or _future(facts, vd.kind):
        return None
    m = values[0]
    if (facts.as_of - m.day).days > vd.max_age_days:
        return None
    if _unread_since(facts, vd.kind, m.day):
        return None   # a newer (or same-day) result could not be read: status unknown
    # Several results on the latest day (a repeat, a D3-only and a total result...) that
    # classify differently leave the status unknown: no card on whichever was listed first.
    if len({_vitamin_d_class(vd, x) for x in values if x.day == m.day}) > 1:
        return None
    chosen, grade = _vitamin_d_class(vd, m)
    if chosen is None or chosen == "unknown":
        return None
    flags: set[str] = set()
    criteria = [_criterion(vd.kind, chosen.criterion, vd.unit, chosen.status)]
    citations = [vd.citation, chosen.criterion.citation]
    if grade is not None:
        criteria.append(_criterion(vd.kind, grade.criterion, vd.unit, grade.name))
        citations.append(grade.criterion.citation)
    if _any_condition(facts, vd.kidney_conditions):
        flags.add("kidney-failure")
        citations.append(vd.kidney_citation.citation)
        criteria.append({"what": "kidney-failure", "criterion": vd.kidney_citation, "unit": "",
                         "result": "kidney-failure"})
    if _taking(facts, vd.supplement_medications):
        flags.add("on-vitamin-d")
    if not _known_age_at_least(facts, vd.regimen_min_age):
        flags.add("no-adult-regimen")   # a child, or age unknown: no adult dosing on a guess
        criteria.append({"what": "no-adult-regimen", "criterion": vd.regimen_age_citation,
                         "unit": "", "result": ""})
    return _finding(rules, chosen.finding, evidence=[m], flags=flags, citations=citations,
                    indicator=grade.indicator if grade and grade.indicator else None,
                    facts=facts, key=m, date=m.day, status=chosen.status, profile=vd.label,
                    grade=grade.name if grade else None, criteria=tuple(criteria),
                    regimen=chosen.regimen)


def _vitamin_d_class(vd: Any, m: Measurement) -> tuple[Any, Any]:
    """(band, grade) the value lies in; (None, None) in no band; ("unknown", None) when a
    comparator value may lie in more than one band (e.g. "<25": deficient or insufficient?)."""
    for band in vd.bands:
        relation = vd.relation(band.criterion.interval, m)
        if relation == "unknown":
            return "unknown", None
        if relation == "inside":
            for g in band.grades:
                if vd.relation(g.criterion.interval, m) == "inside":
                    return band, g
            return band, None
    return None, None


# =========================================================================== bone
def _bone(facts: PatientFacts, rules: Rules) -> Finding | None:
    b = rules.bone
    if facts.birth_date is None:
        return None   # age decides T- vs Z-score: unknown age, no bone finding
    sites = set(b.diagnostic_sites)
    if any(_future(facts, kind, sites) for kind in ("t-score", "z-score", "bmd")):
        return None   # a scan dated after today is the most recent DXA: not read, no guess
    t_scores = [m for m in _usable(facts, "t-score") if m.site in sites]
    z_scores = [m for m in _usable(facts, "z-score") if m.site in sites]
    if not t_scores and not z_scores:
        return None
    # The most recent DXA date: a later scan at a central site that sent only BMD (no T- or
    # Z-score) is still the latest scan, so an older scan's scores are not read as current.
    bmd = [m for m in _usable(facts, "bmd") if m.site in sites]
    dxa_day = max(m.day for m in t_scores + z_scores + bmd)
    unread = {k: facts.unusable_latest[k] for k in ("t-score", "z-score", "bmd")
              if _unread_since(facts, k, dxa_day)}
    if any(day > dxa_day for day in unread.values()):
        return None   # a later scan could not be read: the usable one is not the most recent
    if dxa_day < facts.birth_date:
        return None   # a scan dated before birth: the date or the birthDate is wrong, no guess
    age = age_on(facts.birth_date, dxa_day)
    flags: set[str] = set()
    if (facts.as_of - dxa_day).days > b.repeat_dxa_after_days:
        flags.add("dxa-old")
    if _any_medication(facts, b.suppress_medications):
        flags.add("on-therapy")
    if _any_condition(facts, b.fracture_conditions):
        flags.add("fragility-fracture")
    bmd_same_day = [m for m in bmd if m.day == dxa_day]
    adult = age >= b.t_score_min_age
    age_rule = Interval(float(b.t_score_min_age), True, None, False) if adult else \
        Interval(None, False, float(b.t_score_min_age), False)
    age_criterion = _criterion("age", Criterion(age_rule, b.age_citation.citation, b.age_citation.where),
                               "", "t-score" if adult else "z-score")

    if age >= b.t_score_min_age:
        day_scores = sorted((m for m in t_scores if m.day == dxa_day), key=lambda m: m.value)
        if not day_scores:
            return None
        bands = [("osteoporosis", b.osteoporosis), ("low-bone-mass", b.low_bone_mass)]
        code, crit = _classify_lowest(day_scores, bands)
        kind = "t-score"
    else:
        # Under the T-score age: T-scores never diagnose; Z-scores are read.
        day_scores = sorted((m for m in z_scores if m.day == dxa_day), key=lambda m: m.value)
        if not day_scores:
            return None
        bands = [("bmd-below-expected-for-age", b.below_expected)]
        code, crit = _classify_lowest(day_scores, bands)
        kind = "z-score"
    if code is None:
        return None
    if kind in unread and code != bands[0][0]:
        return None   # a site on that day could not be read: it might be lower (no milder label)
    key = day_scores[0]
    criteria = (_criterion(kind, crit, "", code), age_criterion,
                _criterion("site", b.sites_citation, "", "sites"))
    return _finding(rules, code, evidence=day_scores + bmd_same_day, flags=flags,
                    citations=[crit.citation, b.age_citation.citation, b.sites_citation.citation],
                    facts=facts, key=key, date=dxa_day, age=age, profile=b.label,
                    criteria=criteria, dxa_day=dxa_day)


def _classify_lowest(scores: list[Measurement],
                     bands: list[tuple[str, Criterion]]) -> tuple[str | None, Criterion | None]:
    """The most severe band any site falls in; a site that *might* be in a more severe band
    (comparator) stops the classification, so a milder label is never given by guess."""
    for code, criterion in bands:
        relations = [criterion.interval.relation(m.value, m.comparator) for m in scores]
        if "inside" in relations:
            return code, criterion
        if "unknown" in relations:
            return None, None
    return None, None


def _dxa_screening(facts: PatientFacts, rules: Rules) -> Finding | None:
    b = rules.bone
    age = facts.age
    if facts.gender not in ("male", "female") or age is None:
        return None
    rule = b.screening_age[facts.gender]
    if not rule.interval.contains_point(age):
        return None
    # A DXA on record that could not be used (odd unit, no date...) is still a DXA on record:
    # "no DXA result" would be a guess.
    if any(facts.all(kind) or facts.unusable.get(kind) for kind in b.screening_kinds):
        return None
    if _any_condition(facts, b.suppress_conditions) or _any_medication(facts, b.suppress_medications):
        return None
    return _finding(rules, "dxa-screening-due", evidence=[], flags=set(),
                    citations=[rule.citation, b.screening_age["female"].citation],
                    age=age, sex=facts.gender, date=facts.as_of, profile=b.screening_label,
                    criteria=(_criterion("age", rule, "", facts.gender),))


# =========================================================================== sarcopenia
@dataclass(frozen=True)
class MassValue:
    measure: str
    value: float | None
    unit: str
    state: str                          # low / normal / unknown / absent
    day: date | None
    sources: tuple[Measurement, ...]
    computed: bool
    criterion: Criterion
    comparator: str | None = None       # as sent, for a value that was not computed


def _sarcopenia(facts: PatientFacts, rules: Rules) -> Finding | None:
    s = rules.sarcopenia
    sex = facts.gender
    if sex not in ("male", "female"):
        return None   # every cut-off is sex-specific
    if not _known_age_at_least(facts, s.min_age):
        return None   # adult cut-offs: a child, or age unknown, is never labelled
    grip_crit = s.grip.for_sex(sex)
    grip_state, grips = _grip(facts, grip_crit)
    masses = [_mass(facts, measure, cut.for_sex(sex)) for measure, cut in s.mass]
    mass_state = _combine_mass(masses)
    # "Measured but unusable" (odd unit, no date...) is not "not measured": it may have been
    # normal, so it is unknown (no low-muscle-mass card saying strength was never measured).
    if grip_state == ABSENT and facts.unusable.get("grip-strength"):
        grip_state = UNKNOWN
    if mass_state == ABSENT and any(facts.unusable.get(k) for k in _MASS_KINDS):
        mass_state = UNKNOWN
    gait_crit = s.gait.for_sex(sex)
    gaits = _day_values(facts, "gait-speed")
    gait = gaits[0] if gaits else None
    gait_state = ABSENT if gait is None else _state(gait_crit, gait.value, gait.comparator)
    if len({_state(gait_crit, g.value, g.comparator) for g in gaits}) > 1:
        gait, gait_state = None, UNKNOWN   # slow and not slow on one day: severity unknown
    if _future(facts, "grip-strength"):
        grip_state = UNKNOWN
    if any(_future(facts, k) for k in _MASS_KINDS):
        mass_state = UNKNOWN
    if _future(facts, "gait-speed"):
        gait, gait_state = None, UNKNOWN
    # a newer (or same-day) result that could not be read: the usable one may not be current
    if grips and _unread_since(facts, "grip-strength", grips[0].day) and \
            (grip_state == LOW or _unread_since(facts, "grip-strength", grips[0].day + _DAY)):
        grip_state = UNKNOWN   # (same day: any normal hand still makes grip normal)
    if mass_state in (LOW, NORMAL) and any(
            _unread_since(facts, k, max((mv.day for mv in masses if mv.day), default=None))
            for k in _MASS_KINDS):
        mass_state = UNKNOWN
    if gait is not None and _unread_since(facts, "gait-speed", gait.day):
        gait, gait_state = None, UNKNOWN

    flags: set[str] = set()
    if grip_state == ABSENT and mass_state == LOW:
        code = "low-muscle-mass"
    elif grip_state == LOW and mass_state == LOW:
        code = "sarcopenia-severe" if gait_state == LOW else "sarcopenia-confirmed"
        if gait_state == ABSENT and not facts.unusable.get("gait-speed"):
            flags.add("gait-not-measured")   # (sent but unusable is not "not on record")
    elif grip_state == LOW and mass_state in (ABSENT, UNKNOWN):
        code = "sarcopenia-probable"
        if mass_state == UNKNOWN:
            flags.add("mass-indeterminate")
    else:
        # normal grip, or low grip with normal measured mass, or low mass with normal measured
        # grip, or values that cannot be classified: not sarcopenia, no card.
        return None

    best_grip = max(grips, key=lambda m: m.value) if grips else None
    low_masses = [mv for mv in masses if mv.state == LOW]
    evidence: list[Measurement] = list(grips)
    criteria: list[dict[str, Any]] = []
    if grips:
        criteria.append(_criterion("grip-strength", grip_crit, grips[0].unit, grip_state))
    for mv in masses:
        if mv.state != ABSENT and code != "sarcopenia-probable" or mv.state == UNKNOWN:
            evidence.extend(mv.sources)
            criteria.append(_criterion(mv.measure, mv.criterion, mv.unit, mv.state))
    use_gait = code in ("sarcopenia-severe", "sarcopenia-confirmed") and gait is not None
    if use_gait:
        evidence.append(gait)
        criteria.append(_criterion("gait-speed", gait_crit, gait.unit, gait_state))
    days = [m.day for m in evidence]
    derived = tuple({"measure": mv.measure, "value": mv.value, "unit": mv.unit,
                     "sources": mv.sources, "day": mv.day}
                    for mv in masses if mv.computed and mv.value is not None
                    and (mv.state != ABSENT) and code != "sarcopenia-probable")
    citations = [s.citation, grip_crit.citation] + [mv.criterion.citation for mv in masses] + \
        ([gait_crit.citation] if use_gait else [])
    return _finding(rules, code, evidence=evidence, flags=flags, citations=citations, facts=facts,
                    key=best_grip, date=max(days) if days else facts.as_of, profile=s.label,
                    grip=best_grip, mass_low=tuple(low_masses), gait=gait if use_gait else None,
                    derived=derived, criteria=tuple(criteria), sex=sex)


def _state(criterion: Criterion, value: float, comparator: str | None) -> str:
    relation = criterion.interval.relation(value, comparator)
    return {"inside": LOW, "outside": NORMAL}.get(relation, UNKNOWN)


def _grip(facts: PatientFacts, criterion: Criterion) -> tuple[str, list[Measurement]]:
    """Grip: the latest measurement date's values; the best hand counts (so grip is low only
    when every hand measured that day is low, and normal when any hand is normal)."""
    grips = _usable(facts, "grip-strength")
    if not grips:
        return ABSENT, []
    same_day = [m for m in grips if m.day == grips[0].day]
    states = [_state(criterion, m.value, m.comparator) for m in same_day]
    if NORMAL in states:
        return NORMAL, same_day
    if all(s == LOW for s in states):
        return LOW, same_day
    return UNKNOWN, same_day


def _day_values(facts: PatientFacts, kind: str) -> list[Measurement]:
    """The usable values of ``kind`` from its latest day, newest first."""
    values = _usable(facts, kind)
    return [m for m in values if m.day == values[0].day] if values else []


def _mass(facts: PatientFacts, measure: str, criterion: Criterion) -> MassValue:
    """One mass measure from the latest values (the first combination below). Several values
    of an input on its latest day (two ASM results, two heights) that would classify the
    measure differently make it unknown: which one is right would be a guess."""
    options = [_day_values(facts, kind) or [None] for kind in _MASS_INPUTS]
    first: MassValue | None = None
    states: set[str] = set()
    for combo in itertools.islice(itertools.product(*options), 256):
        mv = _mass_from(dict(zip(_MASS_INPUTS, combo)), measure, criterion)
        first = first or mv
        states.add(mv.state)
    assert first is not None
    return first if len(states) == 1 else dataclasses.replace(first, state=UNKNOWN)


def _mass_from(latest: dict[str, Measurement | None], measure: str, criterion: Criterion) -> MassValue:
    asm = latest["appendicular-lean-mass"]

    def result(value: float | None, unit: str, sources: tuple[Measurement, ...], computed: bool,
               comparator: str | None = None, state: str | None = None) -> MassValue:
        if state is None:
            state = ABSENT if value is None else _state(criterion, value, comparator)
        day = max((m.day for m in sources), default=None)
        return MassValue(measure, value, unit, state, day, sources, computed, criterion,
                         comparator or None)

    if measure == "asm":
        if asm is None:
            return result(None, "kg", (), False)
        return result(asm.value, "kg", (asm,), False, asm.comparator)
    if measure == "asm-index":
        sent = latest["appendicular-lean-mass-index"]
        if sent is not None:
            return result(sent.value, "kg/m2", (sent,), False, sent.comparator)
        height = latest["body-height"]
        if asm is None or height is None:
            return result(None, "kg/m2", (), True)
        if asm.comparator or height.comparator or height.value <= 0:
            return result(None, "kg/m2", (asm, height), True, state=UNKNOWN)
        return result(asm.value / height.value ** 2, "kg/m2", (asm, height), True)
    if measure == "alm-bmi":
        if asm is None:
            return result(None, "m2", (), True)
        bmi = latest["bmi"]
        sources: tuple[Measurement, ...]
        if bmi is not None:
            sources, bmi_value, odd = (asm, bmi), bmi.value, bool(bmi.comparator)
        else:
            weight, height = latest["body-weight"], latest["body-height"]
            if weight is None or height is None:
                return result(None, "m2", (), True)
            sources = (asm, weight, height)
            odd = bool(weight.comparator or height.comparator) or height.value <= 0
            bmi_value = weight.value / height.value ** 2 if not odd else 0.0
        if odd or asm.comparator or bmi_value <= 0:
            return result(None, "m2", sources, True, state=UNKNOWN)
        return result(asm.value / bmi_value, "m2", sources, True)
    raise ValueError(f"unknown mass measure {measure!r}")  # guarded by the rules schema


def _combine_mass(masses: list[MassValue]) -> str:
    states = [mv.state for mv in masses]
    if LOW in states:
        return LOW
    if UNKNOWN in states:
        return UNKNOWN
    if NORMAL in states:
        return NORMAL
    return ABSENT


# =========================================================================== osteosarcopenia
def _osteosarcopenia(bone: Finding | None, sarcopenia: Finding | None, rules: Rules) -> Finding | None:
    if bone is None or sarcopenia is None:
        return None
    if bone.code not in ("osteoporosis", "low-bone-mass") or \
            sarcopenia.code not in ("sarcopenia-confirmed", "sarcopenia-severe"):
        return None
    card = rules.cards.findings["osteosarcopenia"]
    flags = frozenset((bone.variables["flags"] | sarcopenia.variables["flags"]) - {"on-problem-list"})
    suggestions = tuple(dict.fromkeys(bone.suggestions + sarcopenia.suggestions +
                                      rules.suggestions_for("osteosarcopenia", flags)))
    citations = _unique(list(card.get("links", ())) + list(bone.variables["citations"]) +
                        list(sarcopenia.variables["citations"]))
    return Finding(code="osteosarcopenia", indicator=card["indicator"],
                   evidence=tuple(dict.fromkeys(bone.evidence + sarcopenia.evidence)),
                   variables={"components": (bone, sarcopenia), "flags": flags,
                              "citations": citations, "profile": sarcopenia.variables["profile"],
                              "date": max(bone.variables["date"], sarcopenia.variables["date"]),
                              "criteria": tuple(bone.variables["criteria"]) +
                              tuple(sarcopenia.variables["criteria"]),
                              "derived": sarcopenia.variables.get("derived", ())},
                   suggestions=suggestions)
