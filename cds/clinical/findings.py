"""Typed findings: what cds.clinical makes and cds.cards turns into exactly one card each.

A finding's ``variables`` are one dataclass per kind of finding; its field names are the
``{placeholders}`` the finding's card text in rules/cards.yaml may use (besides ``{title}``),
checked when the engine starts (cds.cards.builder.check_templates). Everything else a card
shows (values, how it was classified, flags, citations, suggestions) is on ``Finding``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import Mapping, Union

from cds.clinical.facts import Measurement
from cds.knowledge.intervals import Criterion
from cds.knowledge.vocabulary import Code

_Day = date   # for a second date field (a field named ``date`` shadows the type in its class)


@dataclass(frozen=True)
class Applied:
    """One row of "How it was classified": the rule applied to ``what`` and its result."""

    what: str                  # a kind, a measure or a vocabulary CRITERIA name
    criterion: Criterion
    unit: str = ""             # UCUM code the rule's numbers are in ("" for none)
    result: str = ""           # a finding code, a state (low/normal/unknown), a band status...


@dataclass(frozen=True)
class MassValue:
    """One muscle-mass measure, sent or computed from the latest values."""

    measure: str
    value: float | None
    unit: str
    state: str                          # low / normal / unknown / absent
    day: date | None
    sources: tuple[Measurement, ...]
    computed: bool
    criterion: Criterion
    comparator: str | None = None       # as sent, for a value that was not computed


# --------------------------------------------------------------------------- variables
@dataclass(frozen=True)
class VitaminDVariables:
    date: date                 # the result's day
    profile: str               # the guideline profile's label
    value: Measurement         # the latest 25(OH)D ({value}: number as compared, comparator kept)
    unit: str                  # its canonical unit (UCUM)
    status: str                # the band's status word, e.g. "deficient"
    grade: str | None          # the band's grade (selects summary_by_grade), e.g. "severe"
    regimen: str | None        # the guideline regimen of the band (also fills suggestions)


@dataclass(frozen=True)
class BoneVariables:
    date: date                 # the DXA day
    profile: str
    value: Measurement         # the lowest score at a diagnostic site that day
    site: str | None           # its site
    age: int                   # age on the DXA day (decides T- vs Z-score)
    grade: str | None = None   # "clinical-fracture": osteoporosis by a hip/vertebral fragility fracture
    age_now: int | None = None  # age today, when it differs from the age at the scan
    fracture: str | None = None          # the fracture's site words ("hip")
    fracture_date: str | None = None     # its onset date (ISO), or "date not recorded"


@dataclass(frozen=True)
class FractureGapVariables:
    date: date                 # the fracture's onset day
    profile: str
    fracture: str              # site words ("hip", "vertebral")
    age: int
    diagnosis: str             # "osteoporosis by fracture" or "fragility fracture"


@dataclass(frozen=True)
class BmdChangeVariables:
    date: date                 # the latest scan's day
    profile: str
    site: str                  # the site compared
    value: Measurement         # the latest BMD there
    unit: str                  # its canonical unit (UCUM)
    previous: Measurement      # the previous scan's BMD at the same site
    previous_date: _Day
    change: str                # the decrease, % of the previous value, as shown ("6.1")
    lsc: str                   # the site's least significant change, % ("5.3")


@dataclass(frozen=True)
class ScreeningVariables:
    date: date                 # today
    profile: str
    age: int | str             # "66-67" for a partial birthDate
    sex: str                   # "female" / "male"


@dataclass(frozen=True)
class SarcopeniaVariables:
    date: date                 # the latest day of the values used
    profile: str
    sex: str
    grip: Measurement | None            # the best hand on the latest day
    mass: tuple[MassValue, ...]         # the low mass measures
    gait: Measurement | None            # shown for confirmed / severe sarcopenia only


@dataclass(frozen=True)
class OsteosarcopeniaVariables:
    date: date
    profile: str
    bone: "Finding"            # the bone finding it combines ({bone}: that card's short text)
    sarcopenia: "Finding"      # the sarcopenia finding it combines


# --------------------------------------------------------------------------- order findings
# Every order finding names the draft order it is about ({order}: its text or coding display)
# and, when its card offers to delete that draft, ``delete``: the draft's "Type/id".
@dataclass(frozen=True)
class OrderValueVariables:
    date: date                 # the day of the value used
    order: str
    value: Measurement
    unit: str
    limit: str                 # the cut-off, as text ("< 20 ng/mL")
    delete: str | None


@dataclass(frozen=True)
class KidneyVariables(OrderValueVariables):
    pass


@dataclass(frozen=True)
class DoseVariables(OrderValueVariables):
    dose: str                  # the daily dose read from the order ("50000 IU/day")


@dataclass(frozen=True)
class NoResultVariables:
    date: date                 # today
    order: str
    months: str                # how far back a result was looked for
    delete: str | None


@dataclass(frozen=True)
class DuplicateVariables:
    date: date                 # when the product on record was ordered (else today)
    order: str
    other: str                 # the product on record
    delete: str | None


@dataclass(frozen=True)
class RepeatTestVariables:
    date: date                 # the day of the last result
    order: str
    days: int                  # days since then
    interval: int              # the rule-file interval, days
    delete: str | None


@dataclass(frozen=True)
class LowValueTestVariables:
    date: date                 # today
    order: str
    age: int
    sex: str | None
    delete: str | None


@dataclass(frozen=True)
class DrugBoneVariables:
    date: date                 # today
    order: str
    delete: str | None


@dataclass(frozen=True)
class GlucocorticoidVariables:
    date: date                 # today
    order: str
    dose: str                  # prednisone-equivalent mg/day
    days: int                  # days at or above the limit
    delete: str | None


@dataclass(frozen=True)
class BoneRiskMedicationVariables:
    date: date                 # the medicine's start on record (else today)
    profile: str               # the trigger's guideline (its citation's label)
    grade: str                 # the trigger (medication_risk.yaml): selects summary_by_grade
    medicine: str              # the medicine as the value set names it
    drug: str                  # its short name (the longest value-set keyword in it, else medicine)
    since: str                 # its start (ISO date) or "date not recorded"
    last_dxa: str              # the last DXA's date, or "none on record"
    dose: str | None = None    # glucocorticoid: the daily dose as read ("7.5 mg/day")
    days: int | None = None    # glucocorticoid: days at or above the limit so far
    rows: tuple[str, ...] = ()  # the card's "Values used" rows (medication_risk.yaml values)


Variables = Union[VitaminDVariables, BoneVariables, ScreeningVariables, SarcopeniaVariables,
                  OsteosarcopeniaVariables, OrderValueVariables, NoResultVariables, DuplicateVariables,
                  RepeatTestVariables, LowValueTestVariables, DrugBoneVariables, GlucocorticoidVariables,
                  FractureGapVariables, BmdChangeVariables, BoneRiskMedicationVariables]

#: finding code → the dataclass of its variables (each code is made with exactly this type)
FINDING_VARIABLES: Mapping[str, type] = {
    Code.VITAMIN_D_DEFICIENCY: VitaminDVariables, Code.VITAMIN_D_INSUFFICIENCY: VitaminDVariables,
    Code.VITAMIN_D_EXCESS: VitaminDVariables, Code.VITAMIN_D_BELOW_BONE_TARGET: VitaminDVariables,
    Code.OSTEOPOROSIS: BoneVariables, Code.LOW_BONE_MASS: BoneVariables,
    Code.BMD_BELOW_EXPECTED: BoneVariables,
    Code.DXA_SCREENING_DUE: ScreeningVariables,
    Code.FRACTURE_TREATMENT_GAP: FractureGapVariables,
    Code.BMD_SIGNIFICANT_LOSS: BmdChangeVariables,
    Code.LOW_MUSCLE_MASS: SarcopeniaVariables, Code.SARCOPENIA_PROBABLE: SarcopeniaVariables,
    Code.SARCOPENIA_CONFIRMED: SarcopeniaVariables, Code.SARCOPENIA_SEVERE: SarcopeniaVariables,
    Code.OSTEOSARCOPENIA: OsteosarcopeniaVariables,
    Code.ORDER_ANTIRESORPTIVE_LOW_VITAMIN_D: OrderValueVariables,
    Code.ORDER_ANTIRESORPTIVE_NO_VITAMIN_D: NoResultVariables,
    Code.ORDER_ANTIRESORPTIVE_KIDNEY: KidneyVariables, Code.ORDER_DENOSUMAB_KIDNEY: KidneyVariables,
    Code.ORDER_VITAMIN_D_HIGH_DOSE: DoseVariables, Code.ORDER_VITAMIN_D_DUPLICATE: DuplicateVariables,
    Code.ORDER_VITAMIN_D_RETEST: RepeatTestVariables,
    Code.ORDER_VITAMIN_D_TEST_LOW_VALUE: LowValueTestVariables,
    Code.ORDER_DXA_REPEAT: RepeatTestVariables, Code.ORDER_DXA_LOW_VALUE: LowValueTestVariables,
    Code.ORDER_GLUCOCORTICOID_BONE_PROTECTION: GlucocorticoidVariables,
    Code.ORDER_AROMATASE_INHIBITOR_BONE_HEALTH: DrugBoneVariables,
    Code.ORDER_ADT_BONE_HEALTH: DrugBoneVariables,
    Code.BONE_RISK_MEDICATION: BoneRiskMedicationVariables,
}


def variable_names(finding: str) -> frozenset[str]:
    """The placeholders ``finding``'s variables provide (the dataclass's field names)."""
    return frozenset(f.name for f in dataclasses.fields(FINDING_VARIABLES[finding]))


@dataclass(frozen=True)
class Finding:
    """One clinical finding; ``cds.cards`` turns each into exactly one card."""

    code: str                                  # finding name, e.g. "vitamin-d-deficiency"
    indicator: str                             # info | warning | critical
    variables: Variables                       # for the card text templates (typed per finding)
    evidence: tuple[Measurement, ...] = ()     # the values the finding rests on (shown on the card)
    flags: frozenset[str] = frozenset()        # vocabulary Flag names (cards.yaml notes/unless/only)
    citations: tuple[str, ...] = ()            # citation ids, the first is the card's source
    criteria: tuple[Applied, ...] = ()         # "How it was classified"
    derived: tuple[MassValue, ...] = ()        # computed values shown with their inputs
    suggestions: tuple[str, ...] = ()          # suggestion ids (rules/) to offer on the card

    def __post_init__(self) -> None:
        expected = FINDING_VARIABLES.get(self.code)
        if expected is None or not isinstance(self.variables, expected):
            raise TypeError(f"finding {self.code!r} needs {getattr(expected, '__name__', '?')} "
                            f"variables, not {type(self.variables).__name__}")
