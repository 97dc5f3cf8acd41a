"""Doses and dates every rule reads the same way: the order checks (cds.clinical.orders) and the
patient-view bone-risk-medication rule (cds.clinical.medication_risk) share them, so a
glucocorticoid dose is read by one function with one set of prednisone equivalents."""
from __future__ import annotations

from datetime import date
from typing import Iterable, Sequence

from cds.clinical.drafts import DosagePlan
from cds.clinical.facts import PatientFacts
from cds.knowledge.orders import BoneProtection, OrderRules


def last_result_day(facts: PatientFacts, kinds: Iterable[str]) -> date | None:
    """The newest day a result of ``kinds`` is on record, usable or not (not after today)."""
    kinds = tuple(kinds)
    days = [m.day for k in kinds for m in facts.all(k) if m.day <= facts.as_of]
    days += [d for k in kinds if (d := facts.unusable_latest.get(k)) is not None and d <= facts.as_of]
    return max(days, default=None)


def plan_scale(plan: DosagePlan | None, codes: Sequence[str], o: OrderRules, target: str,
               per_mg: float) -> float | None:
    """Amount of ``target`` ("iu" or "mass" in mg) per base unit of a dosage plan whose product
    has ``codes`` (a count or volume needs the product's strength)."""
    dim = plan.dimension if plan is not None else None
    if dim is None:
        return None
    if dim == target:
        return 1.0
    if dim == "mass" and target == "iu":
        return per_mg
    strength = next((o.strengths[c] for c in codes if c in o.strengths), None)
    if strength is None or strength.dimension != target:
        return None
    return strength.per_unit if dim == "count" else strength.per_ml if dim == "volume" else None


def glucocorticoid_dose(plan: DosagePlan | None, drug: str | None, codes: Sequence[str],
                        b: BoneProtection, o: OrderRules) -> tuple[float, float] | None:
    """(mg/day prednisone-equivalent at the plan's highest daily dose, the rule's daily limit in
    the plan's own base unit) when the drug, dose and unit are known and that dose meets
    ``b.min_per_day``; None otherwise (no dose is guessed). Order checks and the patient-view
    rule (cds.clinical.medication_risk) read glucocorticoid doses with this one function."""
    drug = drug if drug in b.prednisone_equivalent else None
    if drug is None or plan is None or not plan.readable or b.min_per_day is None or b.min_days is None:
        return None
    scale = plan_scale(plan, codes, o, "mass", 1.0)
    top = plan.max_per_day
    if scale is None or top is None:
        return None
    scale *= b.prednisone_equivalent[drug]
    per_day = top * scale
    lower = b.min_per_day.interval
    if not lower.contains_point(per_day) or lower.lower is None:
        return None
    return per_day, lower.lower / scale
