"""The data-handling rules of evaluate: comparators, stale and future results, missing sex or
birth date, kidney failure, peripheral sites, the most recent DXA date, best-hand grip, computed
ASM index and ALM/BMI, and the osteosarcopenia merge. Facts are built directly."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from cds.config import Config
from cds.clinical.evaluate import evaluate
from cds.clinical.facts import ConditionFact, MedicationFact, Measurement, PatientFacts
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
CANONICAL = {"vitamin-d-25oh": "ng/mL", "t-score": "{T-score}", "z-score": "{Z-score}",
             "t-score-peripheral": "{T-score}", "bmd": "g/cm2",
             "appendicular-lean-mass": "kg", "appendicular-lean-mass-index": "kg/m2",
             "grip-strength": "kg", "gait-speed": "m/s", "body-height": "m", "body-weight": "kg",
             "bmi": "kg/m2"}


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def m(kind, value, days_ago=10, **kw):
    when = datetime.combine(AS_OF - timedelta(days=days_ago), datetime.min.time(), timezone.utc)
    unit = kw.pop("unit", CANONICAL[kind])
    return Measurement(kind=kind, value=float(value), unit=unit, when=when, code=f"test|{kind}",
                       display=kind, original_value=float(value), original_unit=unit, **kw)


def facts(*measurements, gender="female", age=60, conditions=(), medications=(), birth=None):
    by_kind: dict[str, list[Measurement]] = {}
    for x in sorted(measurements, key=lambda x: x.when, reverse=True):
        by_kind.setdefault(x.kind, []).append(x)
    if birth is None and age is not None:
        birth = date(AS_OF.year - age, 1, 1)
    conds = {}
    for c in conditions:
        conds.setdefault(c, []).append(ConditionFact(category=c, code=f"test|{c}", display=c))
    meds = {}
    for c in medications:
        meds.setdefault(c, []).append(MedicationFact(category=c, code=f"test|{c}", display=c))
    return PatientFacts(patient_id="p1", as_of=AS_OF, gender=gender, birth_date=birth,
                        measurements=by_kind, conditions=conds, medications=meds)


def codes(findings, drop=("dxa-screening-due",)):
    return [f.code for f in findings if f.code not in drop]


# --------------------------------------------------------------------------- vitamin D
@pytest.mark.parametrize("value,comparator,expected,grade", [
    (8, "<", "vitamin-d-deficiency", "severe"),    # every value below 8 is deficient (and < 12)
    (15, "<", "vitamin-d-deficiency", None),        # < 15: deficient, severity unknown → not claimed
    (20, "<", "vitamin-d-deficiency", None),        # < 20 is entirely deficient
    (25, "<", None, None),                          # deficient or insufficient? no guess, no card
    (30, ">", None, None),                          # normal or excess? no card
    (150, ">", "vitamin-d-excess", "critical"),
    (100, ">=", None, None),                        # 100 itself is not excess: unclassifiable
    (120, ">", "vitamin-d-excess", None),           # excess; critical not claimed
])
def test_comparator_is_honoured_never_guessed(rules, value, comparator, expected, grade):
    found = [f for f in evaluate(facts(m("vitamin-d-25oh", value, comparator=comparator)), rules)]
    assert codes(found) == ([expected] if expected else [])
    if expected:
        assert found[0].variables.grade == grade


def test_vitamin_d_older_than_365_days_makes_no_finding(rules):
    assert codes(evaluate(facts(m("vitamin-d-25oh", 9, days_ago=365)), rules)) == ["vitamin-d-deficiency"]
    assert codes(evaluate(facts(m("vitamin-d-25oh", 9, days_ago=366)), rules)) == []


def test_latest_vitamin_d_counts_and_future_result_is_ignored(rules):
    older_low = m("vitamin-d-25oh", 9, days_ago=100)
    newer_normal = m("vitamin-d-25oh", 40, days_ago=5)
    assert codes(evaluate(facts(older_low, newer_normal), rules)) == []
    future = m("vitamin-d-25oh", 9, days_ago=-3)
    assert codes(evaluate(facts(future, newer_normal), rules)) == []


def test_kidney_failure_defers_to_kdigo_without_dosing(rules):
    # KDIGO 2017: on dialysis (G5D) vitamin D dosing is CKD-MBD care: no draft
    (f,) = evaluate(facts(m("vitamin-d-25oh", 9), conditions=["dialysis"]), rules)
    assert "kidney-failure" in f.flags
    assert "kdigo-2017" in f.citations
    assert "draft-vitamin-d-course" not in f.suggestions
    # KDIGO 2017 Rec 3.1.3: CKD G3a-G5 corrected as in the general population: said, course kept
    (f,) = evaluate(facts(m("vitamin-d-25oh", 9), conditions=["ckd-stage-4-5"]), rules)
    assert "ckd" in f.flags and "kidney-failure" not in f.flags
    assert "kdigo-2017" in f.citations
    assert "draft-vitamin-d-course" in f.suggestions
    (f,) = evaluate(facts(m("vitamin-d-25oh", 9)), rules)
    assert "draft-vitamin-d-course" in f.suggestions


def test_vitamin_d_supplement_on_record_gets_no_second_prescription(rules):
    (f,) = evaluate(facts(m("vitamin-d-25oh", 9), medications=["vitamin-d"]), rules)
    assert "on-vitamin-d" in f.flags
    assert "draft-vitamin-d-course" not in f.suggestions


def test_problem_list_entry_not_suggested_twice(rules):
    (f,) = evaluate(facts(m("vitamin-d-25oh", 9), conditions=["vitamin-d-deficiency"]), rules)
    assert "problem-vitamin-d-deficiency" not in f.suggestions
    (f,) = evaluate(facts(m("t-score", -3, site="total-hip"), conditions=["osteoporosis"]), rules)
    assert f.code == "osteoporosis" and "problem-osteoporosis" not in f.suggestions


# --------------------------------------------------------------------------- bone
def test_age_needs_birth_date_and_screening_needs_sex(rules):
    assert codes(evaluate(facts(m("t-score", -3, site="total-hip"), age=None), rules), drop=()) == []
    assert codes(evaluate(facts(gender=None, age=80), rules), drop=()) == []
    assert codes(evaluate(facts(gender="female", age=None), rules), drop=()) == []
    assert codes(evaluate(facts(gender="female", age=80), rules), drop=()) == ["dxa-screening-due"]


def test_calcaneus_never_diagnoses(rules):
    heel = m("t-score-peripheral", -3.5, site="calcaneus")
    heel_as_t = m("t-score", -3.5, site="calcaneus")
    assert codes(evaluate(facts(heel, age=70), rules), drop=()) == ["dxa-screening-due"]
    assert codes(evaluate(facts(heel_as_t, age=70), rules)) == []


def test_lowest_t_score_of_most_recent_dxa_date(rules):
    old_low = m("t-score", -3.2, days_ago=900, site="lumbar-spine")
    new_hip = m("t-score", -1.5, days_ago=30, site="total-hip")
    new_spine = m("t-score", -2.0, days_ago=30, site="lumbar-spine")
    (f,) = evaluate(facts(old_low, new_hip, new_spine, age=70), rules)
    assert f.code == "low-bone-mass"
    assert f.variables.value is new_spine                    # the lowest on the latest date
    assert old_low not in f.evidence
    (f,) = evaluate(facts(new_hip, m("t-score", -2.6, days_ago=30, site="femoral-neck"), age=70), rules)
    assert f.code == "osteoporosis" and f.variables.value.site == "femoral-neck"


def test_t_score_comparator_that_might_be_osteoporosis_makes_no_milder_card(rules):
    maybe = m("t-score", -2.0, site="total-hip", comparator="<")
    assert codes(evaluate(facts(maybe, age=70), rules)) == []
    surely = m("t-score", -3.0, site="total-hip", comparator="<")
    assert codes(evaluate(facts(surely, age=70), rules)) == ["osteoporosis"]


def test_old_dxa_with_bone_finding_offers_repeat_dxa(rules):
    (f,) = evaluate(facts(m("t-score", -2.0, days_ago=800, site="total-hip"), age=70), rules)
    assert "dxa-old" in f.flags and "order-dxa" in f.suggestions
    (f,) = evaluate(facts(m("t-score", -2.0, days_ago=700, site="total-hip"), age=70), rules)
    assert "dxa-old" not in f.flags and "order-dxa" not in f.suggestions


def test_age_is_taken_at_the_dxa_date(rules):
    # 49 at the scan (Z-score era), 51 today: the scan's T-score is not read
    birth = AS_OF - timedelta(days=int(51 * 365.25))
    scan = [m("t-score", -3.0, days_ago=800, site="lumbar-spine"),
            m("z-score", -1.0, days_ago=800, site="lumbar-spine")]
    assert codes(evaluate(facts(*scan, birth=birth, age=None), rules)) == []


@pytest.mark.parametrize("suppress", [{"conditions": ["osteoporosis"]},
                                      {"medications": ["osteoporosis-therapy"]}])
def test_screening_suppressed_by_diagnosis_or_therapy(rules, suppress):
    assert codes(evaluate(facts(age=70, **suppress), rules), drop=()) == []


def test_screening_suppressed_by_any_dxa_result(rules):
    for kind in ("t-score", "z-score", "bmd"):
        value = 0.9 if kind == "bmd" else 0.2
        assert codes(evaluate(facts(m(kind, value, days_ago=3000, site="total-hip"), age=70), rules),
                     drop=()) == []


def test_screening_not_due_when_a_dxa_is_on_record_but_unusable(rules):
    assert codes(evaluate(facts(age=70), rules), drop=()) == ["dxa-screening-due"]
    for kind in ("t-score", "z-score", "bmd"):
        f = facts(age=70)
        f.unusable[kind] = 1   # e.g. a T-score sent with an unknown unit
        assert codes(evaluate(f, rules), drop=()) == []


def test_screening_not_due_when_normalize_drops_this_patients_dxa(rules):
    from cds.fhir.normalize import normalize

    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}
    odd = {"resourceType": "Observation", "id": "o1", "status": "final",
           "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-01-10",
           "code": {"coding": [{"system": "http://loinc.org", "code": "38267-1"}]},
           "valueQuantity": {"value": -1.2, "unit": "mg", "system": "http://unitsofmeasure.org",
                             "code": "mg"}}
    base = normalize([patient], "p1", rules, as_of=AS_OF)
    assert [f.code for f in evaluate(base, rules)] == ["dxa-screening-due"]
    with_odd = normalize([patient, odd], "p1", rules, as_of=AS_OF)
    assert with_odd.unusable.get("t-score") == 1
    assert evaluate(with_odd, rules) == []


# --------------------------------------------------------------------------- sarcopenia
def test_sex_needed_for_sarcopenia(rules):
    low = [m("grip-strength", 5, laterality="left"), m("appendicular-lean-mass-index", 3)]
    assert codes(evaluate(facts(*low, gender=None), rules)) == []
    assert codes(evaluate(facts(*low, gender="female"), rules)) == ["sarcopenia-confirmed"]


def test_best_hand_counts_on_the_latest_date(rules):
    # women < 16 kg: one hand 15 (low), the other 17 (normal) → best hand normal → no card
    both = [m("grip-strength", 15, laterality="left"), m("grip-strength", 17, laterality="right")]
    assert codes(evaluate(facts(*both), rules)) == []
    # an older strong result does not rescue today's weak hands
    newer = [m("grip-strength", 14, days_ago=5, laterality="left"),
             m("grip-strength", 15, days_ago=5, laterality="right"),
             m("grip-strength", 30, days_ago=400, laterality="right")]
    (f,) = evaluate(facts(*newer), rules)
    assert f.code == "sarcopenia-probable" and f.variables.grip.value == 15


def test_asm_index_computed_from_asm_and_latest_height(rules):
    # woman: ASM 15.5 kg (not < 15), height 1.70 m → 5.36 kg/m2 (< 5.5) → low mass
    data = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 15.5),
            m("body-height", 1.50, days_ago=2000), m("body-height", 1.70, days_ago=50)]
    (f,) = evaluate(facts(*data), rules)
    assert f.code == "sarcopenia-confirmed"
    (derived,) = f.derived
    assert derived.measure == "asm-index" and derived.value == pytest.approx(15.5 / 1.70 ** 2)
    # with the old height 1.50 m the index would be 6.9 (normal): latest height is used
    assert [s.value for s in derived.sources] == [15.5, 1.70]


def test_alm_bmi_from_weight_and_height_for_fnih():
    rules = load_rules(Config(sarcopenia_profile="fnih"))
    # man: ALM 18 kg, weight 90 kg, height 1.75 m → BMI 29.39, ALM/BMI 0.612 (< 0.789)
    data = [m("grip-strength", 20, laterality="right"), m("appendicular-lean-mass", 18),
            m("body-weight", 90), m("body-height", 1.75)]
    (f,) = evaluate(facts(*data, gender="male"), rules)
    assert f.code == "sarcopenia-confirmed"
    assert f.derived[0].value == pytest.approx(18 / (90 / 1.75 ** 2))


def test_mass_reported_as_a_range_is_not_read_as_normal(rules):
    data = [m("grip-strength", 10, laterality="left"),
            m("appendicular-lean-mass-index", 6.0, comparator="<"), m("appendicular-lean-mass", 18)]
    (f,) = evaluate(facts(*data), rules)
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" in f.flags


def test_confirmed_without_gait_says_so(rules):
    data = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass-index", 4.0)]
    (f,) = evaluate(facts(*data), rules)
    assert f.code == "sarcopenia-confirmed" and "gait-not-measured" in f.flags


# --------------------------------------------------------------------------- osteosarcopenia
@pytest.mark.parametrize("t_score,gait,bone,sarc", [
    (-2.7, 1.2, "osteoporosis", "sarcopenia-confirmed"),
    (-1.5, 0.5, "low-bone-mass", "sarcopenia-severe"),
])
def test_osteosarcopenia_replaces_both_cards(rules, t_score, gait, bone, sarc):
    data = [m("t-score", t_score, site="total-hip"), m("grip-strength", 10, laterality="left"),
            m("appendicular-lean-mass-index", 4.5), m("gait-speed", gait)]
    found = evaluate(facts(*data, age=75), rules)
    assert codes(found) == ["osteosarcopenia"]
    (f,) = found
    b, s = f.variables.bone, f.variables.sarcopenia
    assert (b.code, s.code) == (bone, sarc)
    kinds = {e.kind for e in f.evidence}
    assert {"t-score", "grip-strength", "appendicular-lean-mass-index"} <= kinds


def test_no_osteosarcopenia_with_probable_sarcopenia_or_z_score_finding(rules):
    probable = [m("t-score", -2.7, site="total-hip"), m("grip-strength", 10, laterality="left")]
    assert sorted(codes(evaluate(facts(*probable, age=75), rules))) == ["osteoporosis", "sarcopenia-probable"]
    young = [m("z-score", -2.5, site="lumbar-spine"), m("grip-strength", 10, laterality="left"),
             m("appendicular-lean-mass-index", 4.5)]
    assert sorted(codes(evaluate(facts(*young, age=40), rules))) == ["bmd-below-expected-for-age",
                                                                     "sarcopenia-confirmed"]


def test_findings_sorted_most_severe_first(rules):
    data = [m("vitamin-d-25oh", 200), m("t-score", -1.5, site="total-hip")]
    assert [f.indicator for f in evaluate(facts(*data, age=70), rules)] == ["critical", "info"]


def test_us_core_dxa_report_read_by_age_at_scan(rules, shared_dir):
    """US Core's real DXA example (hip/femur T- and Z-scores, 2021-11-11): the patient was born
    1987, so Z-scores (normal) are read and the T-scores (-1.62 hip) are not; the same data for
    a patient born 1950 is low bone mass from the total hip."""
    import json

    from cds.fhir.normalize import normalize

    folder = shared_dir / "us-core"
    resources = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    facts_young = normalize(resources, patient["id"], rules, as_of=AS_OF)
    assert [m.site for m in facts_young.all("t-score")]           # the T-scores were read...
    assert codes(evaluate(facts_young, rules), drop=()) == []      # ...but never diagnose at 34
    older = [dict(r, birthDate="1950-01-01", gender="female") if r["resourceType"] == "Patient" else r
             for r in resources]
    (f,) = evaluate(normalize(older, patient["id"], rules, as_of=AS_OF), rules)
    assert f.code == "low-bone-mass"
    assert (f.variables.value.site, f.variables.value.value) == ("total-hip", -1.62)
    assert "dxa-old" in f.flags                       # 2021 scan: repeat DXA offered
