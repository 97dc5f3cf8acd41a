"""Typed facts about one patient: what ``normalize`` produces and ``evaluate`` reads.

Everything here is already checked and unit-converted: a Measurement's
``value`` is in the canonical unit of its kind (as declared in ``rules/``),
it belongs to the patient in context, has a usable status and a date.
Resources that could not be trusted never become facts; ``excluded`` says
(without patient data) why each one was left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime

from cds.clinical.drafts import DosagePlan


def age_on(birth: date, day: date) -> int:
    """Completed years of age on ``day`` for someone born on ``birth``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


@dataclass(frozen=True)
class Measurement:
    kind: str                 # value-set name in rules/valuesets.yaml, e.g. "vitamin-d-25oh", "t-score"
    value: float              # in the kind's canonical unit
    unit: str                 # canonical UCUM code, e.g. "ng/mL", "kg", "m/s", "{T-score}"
    when: datetime            # timezone-aware; effectiveDateTime, else effectivePeriod.end, else issued
    code: str                 # "system|code" that matched
    display: str              # the value set's display for that code
    original_value: float     # as sent, for the card
    original_unit: str        # as sent (UCUM code), for the card
    site: str | None = None   # DXA site from the value set: lumbar-spine, total-hip, femur, femoral-neck, radius
    laterality: str | None = None  # left / right, when the code says so
    comparator: str | None = None  # "<", "<=", ">=", ">" as sent in valueQuantity.comparator
    resource_id: str | None = None
    fraction: str | None = None    # 25(OH)D only: "d2" / "d3" when the code is one fraction of the total
    # DXA radius only: the words the result names its forearm region with (code.text, bodySite),
    # lower case; None when it states none (rules/bone.yaml forearm decides what they mean)
    region_text: str | None = None
    device: str | None = None      # Observation.device (reference or display), when sent

    @cached_property
    def day(self) -> date:
        # read many times per Measurement by evaluate: computed once (kept in the instance's
        # __dict__, outside the fields: equality, hash and replace() do not see it)
        return self.when.date()


def new_measurement(kind: str, value: float, unit: str, when: datetime, code: str, display: str,
                    original_value: float, original_unit: str, site: str | None = None,
                    laterality: str | None = None, comparator: str | None = None,
                    resource_id: str | None = None, fraction: str | None = None,
                    region_text: str | None = None, device: str | None = None) -> Measurement:
    """``Measurement(...)`` at a third of the cost, for normalize (one per Observation): the
    frozen dataclass's ``__init__`` sets each of its 15 fields through ``object.__setattr__``;
    this fills the new instance's ``__dict__`` at once from its parameters, which are the
    fields with their defaults (tests/unit/clinical/test_facts.py holds the two to each
    other). The same object: fields, equality, hash, still frozen."""
    values = locals()
    m = _new_object(Measurement)
    m.__dict__.update(values, day=when.date())   # ``day`` ready (cached_property's own slot)
    return m


_new_object = object.__new__


@dataclass(frozen=True)
class ConditionFact:
    category: str             # value-set name, e.g. "fracture", "ckd-stage-4-5", "osteoporosis"
    code: str                 # "system|code"
    display: str
    onset: date | None = None
    resource_id: str | None = None


@dataclass(frozen=True)
class MedicationFact:
    category: str             # value-set name, e.g. "vitamin-d", "osteoporosis-therapy"
    code: str                 # "system|code" (or "text|<keyword>" when matched on text by the value set)
    display: str
    authored: date | None = None
    resource_id: str | None = None
    status: str | None = None         # MedicationRequest/-Statement.status as sent
    current: bool = False             # status means "currently taking" (rules/data_quality.yaml)
    # What the dose rules read (cds.fhir.dosage; only when normalize has the order rules):
    plan: DosagePlan | None = None    # dosageInstruction (Statement: dosage) + dispenseRequest
    drug: str | None = None           # rules/orders.yaml drug the record names (one, or None)
    codes: tuple[str, ...] = ()       # "system|code" of the medication, as sent (product strengths)
    started: date | None = None       # full-date start: Request authoredOn, Statement effectivePeriod.start
    ended: date | None = None         # Statement effectivePeriod.end (a course that has ended)


@dataclass(frozen=True)
class ReportFact:
    category: str             # value-set name (valuesets.yaml reports:), e.g. "dxa-report"
    day: date                 # effective[x], else issued
    results: tuple[str, ...] = ()   # ids of the Observations it lists as results ("Observation/<id>")
    resource_id: str | None = None


@dataclass
class PatientFacts:
    patient_id: str
    as_of: date
    gender: str | None = None          # "male" | "female"; anything else is None (sex-specific rules then skip)
    deceased: bool = False             # Patient.deceased[x] true or a date of death: no cards at all
    birth_date: date | None = None
    measurements: dict[str, list[Measurement]] = field(default_factory=dict)   # newest first
    conditions: dict[str, list[ConditionFact]] = field(default_factory=dict)
    medications: dict[str, list[MedicationFact]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)  # reasons, no patient data
    reports: list[ReportFact] = field(default_factory=list)   # DiagnosticReports in the value sets
    # first and last day the birthDate can mean: equal for a full date; for a partial
    # birthDate (YYYY / YYYY-MM) birth_date stays None and only this range is known
    birth_date_range: tuple[date, date] | None = None
    # this patient's own final results that could not be used (unit, date, value, validity),
    # counted per kind: "measured but unusable" is not "not measured" (e.g. no DXA on record)
    unusable: dict[str, int] = field(default_factory=dict)
    # the newest day of those unusable results, per kind (when they had a date): a usable
    # result older than this is not the latest one, so evaluate does not read it as current
    unusable_latest: dict[str, date] = field(default_factory=dict)

    @property
    def age_range(self) -> tuple[int, int] | None:
        """(youngest, oldest) possible age on ``as_of``; one value twice for a full birthDate."""
        if self.birth_date_range is None:
            if self.birth_date is None:
                return None
            age = age_on(self.birth_date, self.as_of)
            return age, age
        return age_on(self.birth_date_range[1], self.as_of), age_on(self.birth_date_range[0], self.as_of)

    @property
    def age(self) -> int | None:
        if self.birth_date is None:
            return None
        return age_on(self.birth_date, self.as_of)

    def latest(self, kind: str) -> Measurement | None:
        values = self.measurements.get(kind)
        return values[0] if values else None

    def all(self, kind: str) -> list[Measurement]:
        return list(self.measurements.get(kind, ()))

    def has_condition(self, category: str) -> bool:
        return bool(self.conditions.get(category))

    def has_medication(self, category: str) -> bool:
        return bool(self.medications.get(category))
