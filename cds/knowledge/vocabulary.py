"""The engine's vocabulary: every name the code and rules/ share, declared once.

These are a contract, not knowledge: the clinical code reads these kinds, computes these
measures, makes these findings and sets these flags; the YAML gives them codes, thresholds
and words. ``load_rules`` checks the contract in both directions at start-up: a name the
code uses that the YAML does not define, or one the YAML defines that the code never uses,
stops start-up with the file, the field and the name (a renamed kind never silently turns
one card into another).

To add a name: declare it here, use it in cds/clinical, define it in rules/ (the start-up
check says which files still lack it).
"""
from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """Observation kinds (rules/valuesets.yaml ``observations:``), by who reads them."""

    VITAMIN_D_25OH = "vitamin-d-25oh"        # clinical.vitamin_d (vitamin_d.yaml kind)
    T_SCORE = "t-score"                      # clinical.bone: diagnoses at central sites
    Z_SCORE = "z-score"                      # clinical.bone: under the T-score age
    BMD = "bmd"                              # clinical.bone: dates the latest scan
    # Recognised so that a calcaneus T-score is never read as a central one; nothing
    # classifies it (bone.yaml: peripheral sites never diagnose).
    T_SCORE_PERIPHERAL = "t-score-peripheral"
    APPENDICULAR_LEAN_MASS = "appendicular-lean-mass"              # clinical.sarcopenia
    APPENDICULAR_LEAN_MASS_INDEX = "appendicular-lean-mass-index"  # clinical.sarcopenia
    GRIP_STRENGTH = "grip-strength"          # clinical.sarcopenia
    GAIT_SPEED = "gait-speed"                # clinical.sarcopenia
    BODY_HEIGHT = "body-height"              # clinical.sarcopenia: ASM index, BMI
    BODY_WEIGHT = "body-weight"              # clinical.sarcopenia: BMI
    BMI = "bmi"                              # clinical.sarcopenia: ALM/BMI
    EGFR = "egfr"                            # clinical.orders: kidney limits of the drug labels
    # clinical.orders (orders.yaml dxa.low_value.risk_observations): a raised fracture risk makes
    # a DXA for a woman under 65 appropriate (CMS249 numerator exclusion)
    FRAX_MAJOR = "frax-major-osteoporotic"
    OST_SCORE = "ost-score"


KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
#: Kinds normalize recognises but no clinical rule reads, each with the reason it is declared
#: (every other Kind is read in cds/clinical or named by a rules file the clinical code reads;
#: tests/unit/knowledge/test_vocabulary.py holds the code to that).
RECOGNISED_ONLY: dict[Kind, str] = {
    Kind.T_SCORE_PERIPHERAL: "a calcaneus T-score is recognised, so it is never read as central",
}

#: DXA sites (valuesets.yaml ``site:``; bone.yaml diagnostic_sites; cards.yaml sites labels).
SITES: tuple[str, ...] = ("lumbar-spine", "total-hip", "femur", "femoral-neck", "radius", "calcaneus")
LATERALITIES: tuple[str, ...] = ("left", "right")
#: LOINC properties a code and a unit must agree on (valuesets.yaml / units.yaml ``property:``).
PROPERTIES: tuple[str, ...] = ("mass-concentration", "substance-concentration")


class Measure(StrEnum):
    """Muscle-mass measures clinical.sarcopenia computes (sarcopenia.yaml mass[].measure)."""

    ASM = "asm"                  # appendicular lean mass, kg
    ASM_INDEX = "asm-index"      # ASM / height², kg/m²
    ALM_BMI = "alm-bmi"          # ALM / BMI, m²


MASS_MEASURES: tuple[str, ...] = tuple(m.value for m in Measure)


class Code(StrEnum):
    """Finding codes: each is one card (cards.yaml findings) and one topic code."""

    VITAMIN_D_DEFICIENCY = "vitamin-d-deficiency"
    VITAMIN_D_INSUFFICIENCY = "vitamin-d-insufficiency"
    VITAMIN_D_EXCESS = "vitamin-d-excess"
    OSTEOPOROSIS = "osteoporosis"
    LOW_BONE_MASS = "low-bone-mass"
    BMD_BELOW_EXPECTED = "bmd-below-expected-for-age"
    DXA_SCREENING_DUE = "dxa-screening-due"
    LOW_MUSCLE_MASS = "low-muscle-mass"
    SARCOPENIA_PROBABLE = "sarcopenia-probable"
    SARCOPENIA_CONFIRMED = "sarcopenia-confirmed"
    SARCOPENIA_SEVERE = "sarcopenia-severe"
    OSTEOSARCOPENIA = "osteosarcopenia"
    # order checks (clinical.orders, rules/orders.yaml): about one draft order each
    ORDER_ANTIRESORPTIVE_LOW_VITAMIN_D = "order-antiresorptive-low-vitamin-d"
    ORDER_ANTIRESORPTIVE_NO_VITAMIN_D = "order-antiresorptive-no-vitamin-d"
    ORDER_ANTIRESORPTIVE_KIDNEY = "order-antiresorptive-kidney"
    ORDER_DENOSUMAB_KIDNEY = "order-denosumab-kidney"
    ORDER_VITAMIN_D_HIGH_DOSE = "order-vitamin-d-high-dose"
    ORDER_VITAMIN_D_DUPLICATE = "order-vitamin-d-duplicate"
    ORDER_VITAMIN_D_RETEST = "order-vitamin-d-retest"
    ORDER_VITAMIN_D_TEST_LOW_VALUE = "order-vitamin-d-test-low-value"
    ORDER_DXA_REPEAT = "order-dxa-repeat"
    ORDER_DXA_LOW_VALUE = "order-dxa-low-value"
    ORDER_GLUCOCORTICOID_BONE_PROTECTION = "order-glucocorticoid-bone-protection"
    ORDER_AROMATASE_INHIBITOR_BONE_HEALTH = "order-aromatase-inhibitor-bone-health"
    ORDER_ADT_BONE_HEALTH = "order-adt-bone-health"
    VITAMIN_D_BELOW_BONE_TARGET = "vitamin-d-below-bone-target"
    FRACTURE_TREATMENT_GAP = "fracture-treatment-gap"
    BMD_SIGNIFICANT_LOSS = "bmd-significant-loss"          # clinical.bone: BMD fell by the LSC or more
    BONE_RISK_MEDICATION = "bone-risk-medication"   # clinical.medication_risk (medication_risk.yaml)


FINDINGS: tuple[str, ...] = tuple(c.value for c in Code)
#: the findings the order checks make (clinical.orders); the others are patient-view findings
ORDER_FINDINGS: tuple[str, ...] = tuple(c.value for c in Code if c.value.startswith("order-"))
PATIENT_VIEW_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if f not in ORDER_FINDINGS)
#: the findings vitamin_d.yaml bands may name
VITAMIN_D_FINDINGS: tuple[str, ...] = (Code.VITAMIN_D_DEFICIENCY, Code.VITAMIN_D_INSUFFICIENCY,
                                       Code.VITAMIN_D_EXCESS)


class Flag(StrEnum):
    """Flags a finding can carry (cards.yaml notes / unless / only)."""

    KIDNEY_FAILURE = "kidney-failure"          # on dialysis (CKD G5D): vitamin D dosing deferred (vitamin D cards)
    CKD = "ckd"                                # CKD G4-G5 not on dialysis: corrected as in the general population
    ON_VITAMIN_D = "on-vitamin-d"              # a vitamin D supplement on record
    ON_PROBLEM_LIST = "on-problem-list"        # the finding's condition is already on the problem list
    ON_THERAPY = "on-therapy"                  # osteoporosis therapy on record
    DXA_OLD = "dxa-old"                        # the last DXA is older than the repeat interval
    FRAGILITY_FRACTURE = "fragility-fracture"  # a fragility fracture on record
    MASS_INDETERMINATE = "mass-indeterminate"  # muscle mass measured but not classifiable
    GAIT_NOT_MEASURED = "gait-not-measured"    # sarcopenia confirmed, gait speed not on record
    GRIP_OLD = "grip-old"                      # sarcopenia: the only grip results are too old to read
    MASS_OLD = "mass-old"                      # sarcopenia: the only lean-mass results are too old to read
    GAIT_OLD = "gait-old"                      # sarcopenia confirmed: the only gait speed is too old to read
    NO_ADULT_REGIMEN = "no-adult-regimen"      # vitamin D: not known to be old enough for the adult regimen
    TEST_PENDING = "test-pending"              # order checks: the test a card would suggest is already drafted
    STAND_IN_EGFR = "stand-in-egfr"            # order checks: eGFR read in place of the label's creatinine clearance
    DXA_RECENT = "dxa-recent"                  # order checks: a DXA from the last 2 years is on record
    NO_RETEST_ORDER = "no-retest-order"        # vitamin D profile advises against routine re-testing (ES 2024)
    CLINICAL_OSTEOPOROSIS = "clinical-osteoporosis"  # hip/vertebral fragility fracture: osteoporosis by fracture
    DXA_SINCE_FRACTURE = "dxa-since-fracture"  # a DXA is on record since the fracture
    VERY_HIGH_RISK = "very-high-risk"          # AACE 2020 very high fracture risk: anabolic first, refer
    KIDNEY_CKD_MBD = "kidney-ckd-mbd"          # CKD G4-G5D (condition or eGFR < 30): CKD-MBD evaluation first
    BISPHOSPHONATE_DRAFT = "bisphosphonate-draft"  # alendronate may be drafted (eGFR known and allows it)
    RADIUS_REGION_NOT_STATED = "radius-region-not-stated"  # the decisive radius result names no region: read as 33 %
    ON_GLUCOCORTICOID = "on-glucocorticoid"    # bone-risk-medication: the medicine is a glucocorticoid (ACR 2022 advice)
    MENOPAUSE_RECORDED = "menopause-recorded"  # a woman under 50 read by T-score: postmenopausal state on record
    MENOPAUSE_BY_AGE = "menopause-by-age"      # a woman, no postmenopausal state on record: age 50 is its proxy
    DXA_REPORT_UNREAD = "dxa-report-unread"    # a DXA report is on record but none of its results can be read


FLAGS: tuple[str, ...] = tuple(f.value for f in Flag)
INDICATORS: tuple[str, ...] = ("info", "warning", "critical")

#: Rows of "How it was classified" that are not a kind or a measure (cards.yaml labels.criteria).
CRITERIA: tuple[str, ...] = ("age", "site", "kidney-failure", "no-adult-regimen",
                             "vitamin-d-dose", "prednisone-equivalent", "duration", "fracture")

#: Placeholders every card text may use besides its finding's variables: the card's title.
CARD_VARIABLES: frozenset[str] = frozenset({"title"})
#: Placeholders a suggestion's FHIR template may use (cards.yaml suggestions.*.resource).
SUGGESTION_VARIABLES: frozenset[str] = frozenset({"patient_id", "regimen", "reason"})
#: FHIR R4 ObservationStatus codes (data_quality.yaml accepted_status is a subset).
OBSERVATION_STATUSES: tuple[str, ...] = ("registered", "preliminary", "final", "amended",
                                         "corrected", "cancelled", "entered-in-error", "unknown")
