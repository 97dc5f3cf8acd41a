"""Vitamin D status from the latest serum 25(OH)D (rules/vitamin_d.yaml)."""
from __future__ import annotations

from cds.clinical.common import (any_condition, any_medication, future, known_age_at_least,
                                 make_finding, taking, unread_since, usable)
from cds.clinical.facts import Measurement, PatientFacts
from cds.clinical.findings import Applied, Finding, VitaminDVariables
from cds.knowledge.rules import Rules
from cds.knowledge.vitamin_d import BoneTarget, Grade, VitaminDBand, VitaminDRules
from cds.knowledge.vocabulary import Flag

UNKNOWN = "unknown"


def evaluate_vitamin_d(facts: PatientFacts, rules: Rules, bone_indication: bool = False) -> Finding | None:
    """``bone_indication``: osteoporosis or low bone mass by the latest DXA (the bone finding);
    the profile's bone target also reads conditions and therapy on record itself."""
    vd = rules.vitamin_d
    current = _current_result(facts, vd)
    if current is None:
        return None
    m, fractions = current
    band, grade = classify(vd, m)
    if band is None and vd.bone_target is not None:
        return _below_bone_target(facts, rules, vd, vd.bone_target, m, fractions, bone_indication)
    if not isinstance(band, VitaminDBand):
        return None   # in no band, or a comparator value that may lie in two
    flags: set[str] = set()
    criteria = [Applied(vd.kind, band.criterion, vd.unit, band.status)]
    citations = [vd.citation, band.criterion.citation]
    if grade is not None:
        criteria.append(Applied(vd.kind, grade.criterion, vd.unit, grade.name))
        citations.append(grade.criterion.citation)
    if any_condition(facts, vd.kidney_conditions):
        flags.add(Flag.KIDNEY_FAILURE)
        citations.append(vd.kidney_citation.citation)
        criteria.append(Applied(Flag.KIDNEY_FAILURE, vd.kidney_citation, "", Flag.KIDNEY_FAILURE))
    elif vd.ckd_citation is not None and any_condition(facts, vd.ckd_conditions):
        flags.add(Flag.CKD)   # KDIGO: corrected as in the general population; the course is kept
        citations.append(vd.ckd_citation.citation)
    if taking(facts, vd.supplement_medications):
        flags.add(Flag.ON_VITAMIN_D)
    if not vd.retest_order:
        flags.add(Flag.NO_RETEST_ORDER)   # ES 2024: no routine follow-up testing ordered now
    if not known_age_at_least(facts, vd.regimen_min_age):
        flags.add(Flag.NO_ADULT_REGIMEN)   # a child, or age unknown: no adult dosing on a guess
        criteria.append(Applied(Flag.NO_ADULT_REGIMEN, vd.regimen_age_citation))
    variables = VitaminDVariables(date=m.day, profile=vd.label, value=m, unit=m.unit,
                                  status=band.status, grade=grade.name if grade else None,
                                  regimen=band.regimen)
    return make_finding(rules, band.finding, variables, facts=facts, evidence=[m, *fractions], flags=flags,
                        citations=citations, criteria=criteria,
                        indicator=grade.indicator if grade and grade.indicator else None)


def _current_result(facts: PatientFacts,
                    vd: VitaminDRules) -> tuple[Measurement, tuple[Measurement, ...]] | None:
    """The latest total 25(OH)D when it describes the current status (with the D2/D3 results it
    was added from, if any), else None."""
    values = usable(facts, vd.kind)
    if not values or future(facts, vd.kind):
        return None   # none, or a result dated after today is the newest: status unknown
    day = values[0].day
    if (facts.as_of - day).days > vd.max_age_days:
        return None
    if unread_since(facts, vd.kind, day):
        return None   # a newer (or same-day) result could not be read: status unknown
    same_day = [x for x in values if x.day == day]
    totals = _totals(facts, vd, same_day)
    if not totals:
        return None   # only fractions whose sum is unknown (e.g. D3 alone with vitamin D2 on record)
    # Several results on the latest day (a repeat, a total and a D2+D3 pair...) that classify
    # differently leave the status unknown: no card on whichever was listed first.
    if len({classify(vd, x) for x in totals}) > 1:
        return None
    m = totals[0]
    return m, (tuple(x for x in same_day if x.fraction) if m.fraction == "sum" else ())


def _totals(facts: PatientFacts, vd: VitaminDRules, day_values: list[Measurement]) -> list[Measurement]:
    """The total 25(OH)D results of one day. A total code counts as it is. Without one, a D2 and
    a D3 fraction are added (one value each; several that differ give nothing); a D3 result alone
    is the total unless vitamin D2 is on record (then the total is unknown); a D2 result alone
    never is. A sum of "<4" (D2 below detection) and 30 is "<34": the bound is kept, not guessed."""
    totals = [m for m in day_values if not m.fraction]
    if totals:
        return totals
    d2 = {(m.value, m.comparator) for m in day_values if m.fraction == "d2"}
    d3 = {(m.value, m.comparator) for m in day_values if m.fraction == "d3"}
    if len(d2) > 1 or len(d3) > 1 or not d3:
        return []
    if not d2:
        if any_medication(facts, vd.d2_medications):
            return []
        return [m for m in day_values if m.fraction == "d3"][:1]
    (v2, c2), (v3, c3) = d2.pop(), d3.pop()
    comparators = {c for c in (c2, c3) if c}
    if not (comparators <= {"<", "<="} or comparators <= {">", ">="}):
        return []   # one bound from below, one from above: the sum is not bounded either way
    comparator = min(comparators, key=len) if comparators else None   # "<" with "<=": "<"
    parts = [m for m in day_values if m.fraction]
    units = {m.original_unit for m in parts}
    same_unit = len(units) == 1
    return [Measurement(kind=vd.kind, value=round(v2 + v3, 6), unit=parts[0].unit,
                        when=max(m.when for m in parts), code="sum|d2+d3",
                        display="25(OH)D total (D2 + D3)",
                        original_value=round(sum(m.original_value for m in parts) if same_unit
                                             else v2 + v3, 6),
                        original_unit=units.pop() if same_unit else parts[0].unit,
                        comparator=comparator, fraction="sum")]


def classify(vd: VitaminDRules, m: Measurement) -> tuple[VitaminDBand | str | None, Grade | None]:
    """(band, grade) the value lies in; (None, None) in no band; ("unknown", None) when a
    comparator value may lie in more than one band (e.g. "<25": deficient or insufficient?)."""
    for band in vd.bands:
        relation = vd.relation(band.criterion.interval, m)
        if relation == UNKNOWN:
            return UNKNOWN, None
        if relation == "inside":
            for g in band.grades:
                if vd.relation(g.criterion.interval, m) == "inside":
                    return band, g
            return band, None
    return None, None


def _below_bone_target(facts: PatientFacts, rules: Rules, vd: VitaminDRules, target: BoneTarget,
                       m: Measurement, fractions: tuple[Measurement, ...],
                       bone_indication: bool) -> Finding | None:
    """AACE/ACE 2020, BHOF 2022: patients with osteoporosis keep 25(OH)D at or above the target.
    Only for an established bone indication; the general population gets no card (ES 2024)."""
    if vd.relation(target.criterion.interval, m) != "inside":
        return None   # at or above the target, or a comparator value that may lie on either side
    indicated = bone_indication or any_condition(facts, target.conditions) or \
        any_medication(facts, target.medications)
    if not indicated:
        return None
    flags: set[str] = set()
    if taking(facts, vd.supplement_medications):
        flags.add(Flag.ON_VITAMIN_D)
    if any_condition(facts, vd.kidney_conditions):
        flags.add(Flag.KIDNEY_FAILURE)
    variables = VitaminDVariables(date=m.day, profile=vd.label, value=m, unit=m.unit,
                                  status=target.status, grade=None, regimen=target.regimen)
    return make_finding(rules, target.finding, variables, facts=facts, evidence=[m, *fractions],
                        flags=flags, citations=[target.criterion.citation, vd.citation],
                        criteria=[Applied(vd.kind, target.criterion, vd.unit, target.status)])
