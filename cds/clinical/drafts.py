"""Draft orders as facts (order-select / order-sign): what cds.fhir.orders reads from
context.draftOrders and cds.clinical.orders checks, kept apart from what is on record.

``DosagePlan`` is a MedicationRequest's dose per day and duration as cds.fhir.dosage reads it:
phases of a daily amount in a base unit (mg, IU, mL or product units), with their days when the
order states them, and a ``problem`` when the dose cannot be read (no number is ever guessed).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    """One stretch of a dosage plan: the amount per day and how many days it lasts."""

    per_day: float        # in the base unit of ``dimension``
    dimension: str
    days: float | None    # None: the dosage lines do not say


@dataclass(frozen=True)
class DosagePlan:
    phases: tuple[Phase, ...] = ()
    supply_days: float | None = None   # dispenseRequest: expected supply × (1 + repeats)
    problem: str | None = None         # why the dose cannot be read; None when phases are known

    @property
    def readable(self) -> bool:
        return self.problem is None and bool(self.phases)

    @property
    def max_per_day(self) -> float | None:
        return max((p.per_day for p in self.phases), default=None) if self.readable else None

    @property
    def dimension(self) -> str | None:
        dims = {p.dimension for p in self.phases}
        return dims.pop() if self.readable and len(dims) == 1 else None

    def days_at_least(self, per_day: float) -> float | None:
        """How many days the plan gives at least ``per_day`` (base unit): the dosage lines'
        own durations when every such phase states one, else the dispensed supply when the
        whole plan is at or above ``per_day``; None when neither says."""
        if not self.readable:
            return None
        above = [p for p in self.phases if p.per_day >= per_day]
        if not above:
            return 0.0
        if all(p.days is not None for p in above):
            return float(sum(p.days for p in above if p.days is not None))
        if len(above) == len(self.phases) and self.supply_days is not None:
            return self.supply_days
        return None


@dataclass(frozen=True)
class DraftOrder:
    ref: str | None                     # "MedicationRequest/<id>" (None: the order has no id)
    resource_type: str
    resource_id: str | None
    checked: bool                       # order-sign: every order; order-select: the selected ones
    display: str                        # what the order names (text, else a coding display)
    categories: frozenset[str] = frozenset()   # medication categories (rules/valuesets.yaml)
    drug: str | None = None             # rules/orders.yaml drug (one, or None)
    services: frozenset[str] = frozenset()     # test categories (rules/orders.yaml services)
    codes: tuple[str, ...] = ()         # "system|code" of the ordered item, as sent
    plan: DosagePlan | None = None      # MedicationRequest only
    status: str | None = None
