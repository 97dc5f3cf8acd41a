"""Vitamin D status from the latest serum 25(OH)D (rules/vitamin_d.yaml)."""
from __future__ import annotations

from cds.clinical.common import (any_condition, future, known_age_at_least, make_finding, taking,
                                 unread_since, usable)
from cds.clinical.facts import Measurement, PatientFacts
from cds.clinical.findings import Applied, Finding, VitaminDVariables
from cds.knowledge.rules import Rules
from cds.knowledge.vitamin_d import Grade, VitaminDBand, VitaminDRules
from cds.knowledge.vocabulary import Flag

UNKNOWN = "unknown"


def evaluate_vitamin_d(facts: PatientFacts, rules: Rules) -> Finding | None:
    vd = rules.vitamin_d
    m = _current_result(facts, vd)
    if m is None:
        return None
    band, grade = classify(vd, m)
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
    if taking(facts, vd.supplement_medications):
        flags.add(Flag.ON_VITAMIN_D)
    if not known_age_at_least(facts, vd.regimen_min_age):
        flags.add(Flag.NO_ADULT_REGIMEN)   # a child, or age unknown: no adult dosing on a guess
        criteria.append(Applied(Flag.NO_ADULT_REGIMEN, vd.regimen_age_citation))
    variables = VitaminDVariables(date=m.day, profile=vd.label, value=m, unit=m.unit,
                                  status=band.status, grade=grade.name if grade else None,
                                  regimen=band.regimen)
    return make_finding(rules, band.finding, variables, facts=facts, evidence=[m], flags=flags,
                        citations=citations, criteria=criteria,
                        indicator=grade.indicator if grade and grade.indicator else None)


def _current_result(facts: PatientFacts, vd: VitaminDRules) -> Measurement | None:
    """The latest 25(OH)D when it describes the current status, else None."""
    values = usable(facts, vd.kind)
    if not values or future(facts, vd.kind):
        return None   # none, or a result dated after today is the newest: status unknown
    m = values[0]
    if (facts.as_of - m.day).days > vd.max_age_days:
        return None
    if unread_since(facts, vd.kind, m.day):
        return None   # a newer (or same-day) result could not be read: status unknown
    # Several results on the latest day (a repeat, a D3-only and a total result...) that
    # classify differently leave the status unknown: no card on whichever was listed first.
    if len({classify(vd, x) for x in values if x.day == m.day}) > 1:
        return None
    return m


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
