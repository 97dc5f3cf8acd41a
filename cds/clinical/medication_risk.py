"""Bone-harming medicines on record (rules/medication_risk.yaml): bone-risk-medication.

A systemic glucocorticoid at or above the daily prednisone-equivalent limit for longer than the
duration limit so far (ACR 2022), an aromatase inhibitor or androgen deprivation therapy the
patient may be taking now, and no DXA in the last two years: one info card naming the medicine
(and, for a glucocorticoid, the dose as read and since when) with a DXA order suggestion.

The glucocorticoid dose is read as the order checks read it (cds.clinical.orders.glucocorticoid_dose:
one dosage reader, one set of prednisone equivalents). "So far" counts from the record's start
to today (or its end, or the end of the days its dosage or supply gives), joined with the earlier
qualifying records it continues (refills within medication_risk.yaml refill_gap_days). A dose or
duration that cannot be read, a start that is not a full date, a course that has ended, a DXA
dated after today: no card.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterable

from cds.clinical.common import any_medication, make_finding
from cds.clinical.facts import MedicationFact, PatientFacts
from cds.clinical.findings import Applied, BoneRiskMedicationVariables, Finding, OsteosarcopeniaVariables
from cds.clinical.dose import glucocorticoid_dose, last_result_day
from cds.knowledge.intervals import fmt_number
from cds.knowledge.loader import PLACEHOLDER
from cds.knowledge.medication_risk import MedicationRiskRules, Trigger
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code, Flag


@dataclass(frozen=True)
class Exposure:
    """One medicine on record that triggers the card."""

    med: MedicationFact
    per_day: float | None = None     # glucocorticoid: mg/day prednisone-equivalent
    own_mg: float | None = None      # glucocorticoid: mg/day of the drug itself
    days: int | None = None          # glucocorticoid: days at or above the limit so far
    since: date | None = None        # glucocorticoid: the first day of those days


def _text(template: str, **values: str) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def short_name(med: MedicationFact, rules: Rules) -> str:
    """The drug's short name: the longest text keyword of its value set found in what it is
    called ("letrozole" in a letrozole/ribociclib pack, "methylprednisolone", not "prednisolone")."""
    words = [k for k, category in rules.terminology.medication_keywords
             if category == med.category and k in med.display.lower()]
    return max(words, key=len) if words else med.display


def taking_now(med: MedicationFact, today: date) -> bool:
    """May be taking it today: a current status or none stated, and no end before today."""
    return (med.current or med.status is None) and (med.ended is None or med.ended >= today)


@dataclass(frozen=True)
class Course:
    """One glucocorticoid record at or above the daily limit: the days it covers."""

    med: MedicationFact
    start: date
    stop: date              # today, the statement's end or the end of the days it gives
    per_day: float          # mg/day prednisone-equivalent
    own_mg: float           # mg/day of the drug itself


def _course(facts: PatientFacts, med: MedicationFact, trigger: Trigger, rules: Rules) -> Course | None:
    """The record as a course at or above the daily limit, or None when it is below it or its
    dose, start or length cannot be read (no guess)."""
    b = trigger.protection
    if med.started is None or med.started > facts.as_of:
        return None
    dosed = glucocorticoid_dose(med.plan, med.drug, med.codes, b, rules.orders)
    if dosed is None or med.plan is None or med.drug is None:
        return None
    per_day, limit = dosed
    planned = med.plan.days_at_least(limit)
    if planned is None and any(p.per_day < limit for p in med.plan.phases):
        return None   # a lower phase with no stated length: the days at the dose are unknown
    stops = [facts.as_of] + ([med.ended] if med.ended is not None else [])
    if planned is not None:
        stops.append(med.started + timedelta(days=int(planned)))
    elif med.ended is None and not taking_now(med, facts.as_of):
        return None   # a finished course whose length is not stated: its days are unknown
    stop = min(stops)
    if stop < med.started:
        return None
    return Course(med, med.started, stop, per_day, per_day / b.prednisone_equivalent[med.drug])


def glucocorticoid_exposure(facts: PatientFacts, trigger: Trigger, rules: Rules) -> Exposure | None:
    """A glucocorticoid the patient may be taking now at or above the daily limit, for longer
    than the duration limit so far: its own days, joined with the earlier qualifying records it
    continues (refills: each one starting within the refill gap of the one before ends)."""
    b = trigger.protection
    if b.min_days is None:
        return None
    courses = [c for m in facts.medications.get(trigger.drug_class, ())
               if (c := _course(facts, m, trigger, rules)) is not None]
    gap = rules.medication_risk.refill_gap_days
    for cur in sorted((c for c in courses if taking_now(c.med, facts.as_of)),
                      key=lambda c: c.start, reverse=True):
        start, joined = cur.start, True
        while joined:
            joined = False
            for c in courses:
                if c.start < start and (start - c.stop).days <= gap:
                    start, joined = c.start, True
        days = (cur.stop - start).days
        if b.min_days.interval.contains_point(days):
            return Exposure(cur.med, cur.per_day, cur.own_mg, days, start)
    return None


def _exposure(facts: PatientFacts, trigger: Trigger, rules: Rules) -> Exposure | None:
    if trigger.dosed:
        return glucocorticoid_exposure(facts, trigger, rules)
    meds = sorted((m for m in facts.medications.get(trigger.drug_class, ()) if taking_now(m, facts.as_of)),
                  key=lambda m: (m.started or m.authored or date.min), reverse=True)
    return Exposure(meds[0]) if meds else None


def covered(findings: Iterable[Finding], mr: MedicationRiskRules) -> bool:
    """A card already shown calls for a DXA and treatment (medication_risk.yaml not_with)."""
    for f in findings:
        if f.code in mr.not_with:
            return True
        if isinstance(f.variables, OsteosarcopeniaVariables) and f.variables.bone.code in mr.not_with:
            return True
    return False


def evaluate_medication_risk(facts: PatientFacts, rules: Rules) -> Finding | None:
    mr = rules.medication_risk
    # a DXA report (rules/bone.yaml dxa_reports) is a DXA done, whether its results can be read or not
    reports = [r.day for r in facts.reports if r.category in rules.bone.dxa_reports]
    if any(m.day > facts.as_of for k in mr.dxa_kinds for m in facts.all(k)) or \
            any(d > facts.as_of for k, d in facts.unusable_latest.items() if k in mr.dxa_kinds) or \
            any(d > facts.as_of for d in reports):
        return None   # a DXA dated after today is the newest one: not read, no guess
    last = max([d for d in (last_result_day(facts, mr.dxa_kinds),) if d is not None] + reports, default=None)
    if last is not None and (facts.as_of - last).days < mr.dxa_within_days:
        return None   # a DXA in the last two years: nothing to do
    for trigger in mr.triggers:
        found = _exposure(facts, trigger, rules)
        if found is not None:
            return _finding(facts, rules, trigger, found, last)
    return None


def _finding(facts: PatientFacts, rules: Rules, trigger: Trigger, e: Exposure,
             last: date | None) -> Finding:
    mr, b, v = rules.medication_risk, trigger.protection, rules.medication_risk.values
    start = e.since or e.med.started or e.med.authored
    since = start.isoformat() if start else v["no_date"]
    last_dxa = last.isoformat() if last else v["no_dxa"]
    dose = None
    if e.per_day is not None and e.own_mg is not None:
        dose = f"{fmt_number(e.own_mg)} mg/day"
        if fmt_number(e.own_mg) != fmt_number(e.per_day):
            dose = _text(v["equivalent"], dose=dose, prednisone=fmt_number(e.per_day))
    medicine = e.med.display
    row = _text(v["glucocorticoid"], medicine=medicine, dose=dose, since=since, days=str(e.days)) \
        if dose is not None else _text(v["medicine"], medicine=medicine, since=since)
    flags: set[str] = {Flag.ON_GLUCOCORTICOID} if trigger.dosed else set()
    if any_medication(facts, rules.fracture.therapy_medications):
        flags.add(Flag.ON_THERAPY)
    citations = [trigger.citation.citation]
    criteria: list[Applied] = []
    if trigger.dosed and b.min_per_day is not None and b.min_days is not None:
        citations += [b.min_per_day.citation,
                      b.equivalent_citation.citation if b.equivalent_citation else ""]
        criteria = [Applied("prednisone-equivalent", b.min_per_day, "mg/d"),
                    Applied("duration", b.min_days, "d")]
    citations.append(mr.dxa_citation.citation)
    variables = BoneRiskMedicationVariables(
        date=start or facts.as_of, profile=rules.citations[trigger.citation.citation].label,
        grade=trigger.name, medicine=medicine, drug=short_name(e.med, rules), since=since, last_dxa=last_dxa, dose=dose,
        days=e.days, rows=(row, _text(v["dxa"], last_dxa=last_dxa)))
    return make_finding(rules, Code.BONE_RISK_MEDICATION, variables, facts=facts, evidence=[],
                        flags=flags, citations=citations, criteria=criteria)
