"""Draft orders + the patient's record → order findings (order-select / order-sign).

Knows no threshold, drug or test of its own: everything comes from rules/orders.yaml
(``rules.orders``) and the categories rules/valuesets.yaml gives each medication and test.
The draft orders are facts of their own (cds.fhir.orders.DraftOrder), never mixed with what
is on record. Every check gives no finding when a value it needs is missing, stale or in
doubt (a comparator across the cut-off, same-day results that disagree, a newer result that
could not be read, a result dated after today, a dose or duration that cannot be read); each
finding carries the value it used, with its date.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterable, Sequence

from cds.clinical.common import make_finding, unread_since, usable
from cds.clinical.facts import Measurement, MedicationFact, PatientFacts
from cds.clinical.findings import (Applied, DoseVariables, DrugBoneVariables, DuplicateVariables,
                                   Finding, GlucocorticoidVariables, KidneyVariables,
                                   LowValueTestVariables, NoResultVariables, OrderValueVariables,
                                   RepeatTestVariables)
from cds.clinical.dose import glucocorticoid_dose, last_result_day, plan_scale
from cds.clinical.drafts import DraftOrder
from cds.knowledge.intervals import Interval, fmt_number
from cds.knowledge.orders import BoneProtection, OrderRules
from cds.knowledge.rules import Rules
from cds.knowledge.vocabulary import Code, Flag

INSIDE, OUTSIDE, DOUBT, ABSENT, STALE = "inside", "outside", "doubt", "absent", "stale"
_SEVERITY = {"critical": 0, "warning": 1, "info": 2}
_BONE_FINDINGS = {Code.OSTEOPOROSIS, Code.LOW_BONE_MASS, Code.BMD_BELOW_EXPECTED, Code.OSTEOSARCOPENIA}
Relation = Callable[[Interval, Measurement], str]


@dataclass(frozen=True)
class Reading:
    """The latest result of one kind, read against one cut-off."""

    state: str                       # inside / outside / doubt / absent / stale
    value: Measurement | None = None


def _plain(interval: Interval, m: Measurement) -> str:
    return interval.relation(m.value, m.comparator)


def latest_against(facts: PatientFacts, kind: str, interval: Interval, max_age_days: int,
                   relation: Relation = _plain) -> Reading:
    """Where the latest result of ``kind`` lies against ``interval`` (``relation`` compares one
    result: vitamin D passes its stated-equivalents comparison, so a result sent in nmol/L meets
    the cut-off as the guideline states it in nmol/L)."""
    if any(m.day > facts.as_of for m in facts.all(kind)):
        return Reading(DOUBT)        # a result dated after today is the newest: not read, no guess
    values = usable(facts, kind)
    if not values:
        unread = facts.unusable_latest.get(kind)
        if facts.unusable.get(kind) and (unread is None or (facts.as_of - unread).days <= max_age_days):
            return Reading(DOUBT)    # measured in the window, but not readable: not "none on record"
        return Reading(ABSENT)
    m = values[0]
    if unread_since(facts, kind, m.day):
        return Reading(DOUBT, m)     # a newer (or same-day) result could not be read
    if (facts.as_of - m.day).days > max_age_days:
        return Reading(STALE, m)
    same_day = {relation(interval, x) for x in values if x.day == m.day}
    if len(same_day) > 1 or "unknown" in same_day:
        return Reading(DOUBT, m)     # a comparator across the cut-off, or same-day disagreement
    return Reading(same_day.pop(), m)


def _future(facts: PatientFacts, kinds: Iterable[str]) -> bool:
    return any(m.day > facts.as_of for k in kinds for m in facts.all(k))


def _current(facts: PatientFacts, categories: Iterable[str], but: str | None) -> list[MedicationFact]:
    """Medications on record with a stated current status (not the draft itself)."""
    return [m for c in categories for m in facts.medications.get(c, ())
            if m.current and (but is None or m.resource_id != but)]


def _may_take(facts: PatientFacts, categories: Iterable[str]) -> bool:
    return any(m.current or m.status is None for c in categories for m in facts.medications.get(c, ()))


def _on_record(facts: PatientFacts, conditions: Iterable[str] = (), medications: Iterable[str] = ()) -> bool:
    return any(facts.has_condition(c) for c in conditions) or \
        any(facts.has_medication(c) for c in medications)


def age_within(facts: PatientFacts, interval: Interval) -> int | None:
    """The patient's age when it is known and inside ``interval`` (a partial birthDate counts
    only when every age it allows is inside); None otherwise."""
    span = facts.age_range
    if span is None:
        return None
    young, old = span
    return young if all(interval.contains_point(float(a)) for a in range(young, old + 1)) else None


def _pending(drafts: Sequence[DraftOrder], service: str, but: DraftOrder) -> bool:
    return any(service in d.services and d is not but for d in drafts)


def _is(order: DraftOrder, o: OrderRules, drugs: Iterable[str]) -> str | None:
    """The order's drug when it is one of ``drugs`` and the order is in that drug's class."""
    drug = order.drug
    if drug is not None and drug in set(drugs) and o.drugs[drug].drug_class in order.categories:
        return drug
    return None


# =========================================================================== entry point
def evaluate_orders(facts: PatientFacts, drafts: Sequence[DraftOrder], rules: Rules) -> list[Finding]:
    """Findings for the drafts to check (order-select: the selected ones; order-sign: all);
    every draft, selected or not, counts as pending when a suggestion would order the same."""
    o = rules.orders
    out: list[Finding] = []
    for order in drafts:
        if not order.checked:
            continue
        for check in _CHECKS:
            out.extend(check(facts, order, drafts, rules, o))
    out.sort(key=lambda f: _SEVERITY.get(f.indicator, 3))
    return out


# --------------------------------------------------------------------------- 1 antiresorptive + vitamin D
def _antiresorptive_vitamin_d(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
                              o: OrderRules) -> list[Finding]:
    r = o.antiresorptive_vitamin_d
    if _is(order, o, r.drugs) is None:
        return []
    vd = rules.vitamin_d
    max_age = o.max_age_days[vd.kind]
    reading = latest_against(facts, vd.kind, r.deficient.interval, max_age, vd.relation)
    flags: set[str] = {Flag.TEST_PENDING} if _pending(drafts, r.test_service, order) else set()
    if reading.state == INSIDE and reading.value is not None:
        m = reading.value
        return [make_finding(rules, Code.ORDER_ANTIRESORPTIVE_LOW_VITAMIN_D,
                             OrderValueVariables(date=m.day, order=order.display, value=m, unit=m.unit,
                                                 limit=r.deficient.interval.describe(m.unit), delete=None),
                             facts=facts, evidence=[m], flags=flags, indicator=r.indicator,
                             citations=(r.deficient.citation, *r.citations),
                             criteria=[Applied(vd.kind, r.deficient, vd.unit)])]
    if reading.state in (ABSENT, STALE):
        evidence = [reading.value] if reading.value is not None else []
        return [make_finding(rules, Code.ORDER_ANTIRESORPTIVE_NO_VITAMIN_D,
                             NoResultVariables(date=facts.as_of, order=order.display,
                                                months=fmt_number(max_age / 30.4375), delete=None),
                             facts=facts, evidence=evidence, flags=flags, indicator=r.indicator,
                             citations=r.citations, criteria=[])]
    return []


# --------------------------------------------------------------------------- 2 kidney function
def _kidney(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
            o: OrderRules) -> list[Finding]:
    out = []
    for k in o.kidney:
        if _is(order, o, (k.drug,)) is None:
            continue
        reading = latest_against(facts, k.kind, k.cut.interval, o.max_age_days[k.kind])
        if reading.state != INSIDE or reading.value is None:
            continue   # not below the limit, none on record, stale or in doubt: no card on a guess
        m = reading.value
        flags: set[str] = {Flag.STAND_IN_EGFR} if k.stand_in else set()
        out.append(make_finding(
            rules, k.finding,
            KidneyVariables(date=m.day, order=order.display, value=m, unit=m.unit,
                            limit=k.cut.interval.describe(rules.cards.units.get(m.unit, m.unit)),
                            delete=order.ref if k.delete else None),
            facts=facts, evidence=[m], flags=flags, indicator=k.indicator, citations=(k.cut.citation,),
            criteria=[Applied(k.kind, k.cut, m.unit)]))
    return out


# --------------------------------------------------------------------------- 3 vitamin D dose
def _scale(order: DraftOrder, o: OrderRules, target: str, per_mg: float) -> float | None:
    """Amount of ``target`` ("iu" or "mass" in mg) per base unit of the order's dose."""
    return plan_scale(order.plan, order.codes, o, target, per_mg)


def _vitamin_d_dose(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
                    o: OrderRules) -> list[Finding]:
    r = o.vitamin_d_dose
    if not any(c in order.categories for c in r.drugs) or order.plan is None or not order.plan.readable:
        return []
    scale = _scale(order, o, "iu", r.iu_per_mg)
    per_day = order.plan.max_per_day
    if scale is None or per_day is None:
        return []   # the dose cannot be read as IU per day: no card on a guess
    iu = per_day * scale
    if not r.high_dose.interval.contains_point(iu):
        return []
    vd = rules.vitamin_d
    for level, indicator in ((r.critical_level, "critical"), (r.warning_level, "warning")):
        reading = latest_against(facts, vd.kind, level.interval, o.max_age_days[vd.kind], vd.relation)
        if reading.state == DOUBT:
            return []
        if reading.state == INSIDE and reading.value is not None:
            m = reading.value
            return [make_finding(
                rules, Code.ORDER_VITAMIN_D_HIGH_DOSE,
                DoseVariables(date=m.day, order=order.display, value=m, unit=m.unit,
                              limit=level.interval.describe(m.unit), delete=order.ref,
                              dose=f"{fmt_number(round(iu))} IU/day"),
                facts=facts, evidence=[m], flags=set(), indicator=indicator,
                citations=(level.citation, r.high_dose.citation, r.iu_per_mg_citation.citation),
                criteria=[Applied("vitamin-d-dose", r.high_dose, "[iU]/d"),
                          Applied(vd.kind, level, vd.unit)])]
    return []


def _vitamin_d_duplicate(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
                         o: OrderRules) -> list[Finding]:
    r = o.vitamin_d_dose
    if not any(c in order.categories for c in r.drugs):
        return []
    others = _current(facts, r.duplicate_on_record, order.resource_id)
    if not others:
        return []
    med = others[0]
    return [make_finding(rules, Code.ORDER_VITAMIN_D_DUPLICATE,
                         DuplicateVariables(date=med.authored or facts.as_of, order=order.display,
                                            other=med.display, delete=order.ref),
                         facts=facts, evidence=[], flags=set(), citations=(r.duplicate_citation.citation,),
                         criteria=[])]


# --------------------------------------------------------------------------- 4 25(OH)D test
def _vitamin_d_test(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
                    o: OrderRules) -> list[Finding]:
    r = o.vitamin_d_test
    kind = rules.vitamin_d.kind
    if r.service not in order.services or _future(facts, (kind,)):
        return []
    last = last_result_day(facts, (kind,))
    if last is not None and (facts.as_of - last).days < r.repeat_within_days:
        shown = [m for m in usable(facts, kind) if m.day == last][:1]
        return [make_finding(rules, Code.ORDER_VITAMIN_D_RETEST,
                             RepeatTestVariables(date=last, order=order.display,
                                                 days=(facts.as_of - last).days,
                                                 interval=r.repeat_within_days, delete=order.ref),
                             facts=facts, evidence=shown, flags=set(), citations=(r.repeat_citation.citation,),
                             criteria=[])]
    age = age_within(facts, r.low_value_age.interval)
    if age is None:
        return []   # older, a child, or age unknown: no low-value label on a guess
    if _on_record(facts, r.indication_conditions, r.indication_medications):
        return []
    return [make_finding(rules, Code.ORDER_VITAMIN_D_TEST_LOW_VALUE,
                         LowValueTestVariables(date=facts.as_of, order=order.display, age=age,
                                               sex=facts.gender, delete=None),
                         facts=facts, evidence=[], flags=set(),
                         citations=(r.low_value_age.citation, r.indication_citation.citation),
                         criteria=[Applied("age", r.low_value_age, "", "")])]


# --------------------------------------------------------------------------- 5 DXA
def _dxa(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
         o: OrderRules) -> list[Finding]:
    r = o.dxa
    if r.service not in order.services or _future(facts, r.kinds):
        return []
    last = last_result_day(facts, r.kinds)
    if last is not None and (facts.as_of - last).days < r.repeat_within_days:
        if _on_record(facts, r.bone_conditions) or _bone_finding(facts, rules):
            return []
        if _therapy_since(facts, r.therapy, last) is not False or _may_take(facts, r.repeat_exempt_medications):
            return []   # treatment started since (or its start unknown), or a reason for a repeat
        return [make_finding(rules, Code.ORDER_DXA_REPEAT,
                             RepeatTestVariables(date=last, order=order.display,
                                                 days=(facts.as_of - last).days,
                                                 interval=r.repeat_within_days, delete=order.ref),
                             facts=facts, evidence=[], flags=set(), citations=(r.repeat_citation.citation,),
                             criteria=[])]
    if facts.gender != r.low_value_sex:
        return []
    age = age_within(facts, r.low_value_age.interval)
    if age is None or _on_record(facts, r.risk_conditions, r.risk_medications):
        return []
    for kind, interval in r.risk_observations:
        if latest_against(facts, kind, interval, o.max_age_days.get(kind, 365)).state in (INSIDE, DOUBT):
            return []
    return [make_finding(rules, Code.ORDER_DXA_LOW_VALUE,
                         LowValueTestVariables(date=facts.as_of, order=order.display, age=age,
                                               sex=facts.gender, delete=order.ref),
                         facts=facts, evidence=[], flags=set(), citations=(r.low_value_age.citation,),
                         criteria=[Applied("age", r.low_value_age, "", "")])]


def _therapy_since(facts: PatientFacts, categories: Iterable[str], day: date) -> bool | None:
    """True: an osteoporosis drug started on or after ``day``; None: one with no start date."""
    meds = [m for c in categories for m in facts.medications.get(c, ())]
    if any(m.authored is None for m in meds):
        return None
    return any(m.authored is not None and m.authored >= day for m in meds)


def _bone_finding(facts: PatientFacts, rules: Rules) -> bool:
    """The patient-view classification of the same record finds low bone density."""
    from cds.clinical.evaluate import evaluate   # the patient-view checks, reused as they are
    return any(f.code in _BONE_FINDINGS for f in evaluate(facts, rules))


# --------------------------------------------------------------------------- 6 bone protection
def _bone_protection(facts: PatientFacts, order: DraftOrder, drafts: Sequence[DraftOrder], rules: Rules,
                     o: OrderRules) -> list[Finding]:
    out = []
    for b in o.bone_protection:
        if b.drug_class not in order.categories:
            continue
        last = last_result_day(facts, o.dxa.kinds)
        recent = last is not None and (facts.as_of - last).days < b.dxa_within_days
        pending = _pending(drafts, o.dxa.service, order)
        flags: set[str] = {Flag.DXA_RECENT} if recent else set()
        if pending:
            flags.add(Flag.TEST_PENDING)
        if b.min_per_day is None:
            if b.only_without_dxa and (recent or pending):
                continue
            out.append(make_finding(rules, b.finding, DrugBoneVariables(date=facts.as_of, order=order.display,
                                                                        delete=None),
                                    facts=facts, evidence=[], flags=flags, citations=(b.citation.citation,),
                                    criteria=[]))
            continue
        dosed = _glucocorticoid(order, b, o)
        if dosed is None or b.min_days is None:
            continue
        per_day, days = dosed
        out.append(make_finding(
            rules, b.finding,
            GlucocorticoidVariables(date=facts.as_of, order=order.display, delete=None,
                                    dose=f"{fmt_number(per_day)} mg/day", days=round(days)),
            facts=facts, evidence=[], flags=flags,
            citations=(b.citation.citation, b.equivalent_citation.citation if b.equivalent_citation else ""),
            criteria=[Applied("prednisone-equivalent", b.min_per_day, "mg/d"),
                      Applied("duration", b.min_days, "d")]))
    return out


def _glucocorticoid(order: DraftOrder, b: BoneProtection, o: OrderRules) -> tuple[float, float] | None:
    """(mg/day prednisone-equivalent, days at or above the daily limit) when both are known and
    the order meets the rule; None otherwise (unknown drug, dose or duration: no card)."""
    dosed = glucocorticoid_dose(order.plan, order.drug, order.codes, b, o)
    if dosed is None or order.plan is None or b.min_days is None:
        return None
    per_day, limit = dosed
    days = order.plan.days_at_least(limit)
    if days is None or not b.min_days.interval.contains_point(days):
        return None
    return per_day, days


_CHECKS = (_antiresorptive_vitamin_d, _kidney, _vitamin_d_dose, _vitamin_d_duplicate, _vitamin_d_test,
           _dxa, _bone_protection)
