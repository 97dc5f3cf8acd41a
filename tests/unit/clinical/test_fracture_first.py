"""Issue 9, bone: fracture first. FHIR resources go through normalize and evaluate; each table row
names the rule it checks (rules/fracture.yaml cites the guideline text)."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
PID = "fx1"
LOINC, SNOMED, ICD = "http://loinc.org", "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10-cm"
UCUM = "http://unitsofmeasure.org"
HIP, RADIUS, HAND, VERTEBRA = "431031001", "704336007", "704333004", "11311601000119109"


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())   # the default profiles (vitamin D: Endocrine Society 2024)


def patient(birth="1954-02-03", gender="female"):
    return {"resourceType": "Patient", "id": PID, "gender": gender, "birthDate": birth}


def fracture(code, days_ago=100, system=SNOMED, rid=None):
    res = {"resourceType": "Condition", "id": rid or f"fx-{code}-{days_ago}", "subject": {"reference": f"Patient/{PID}"},
           "code": {"coding": [{"system": system, "code": code}]}}
    if days_ago is not None:
        res["onsetDateTime"] = (AS_OF - timedelta(days=days_ago)).isoformat()
    return res


def obs(code, value, unit, days_ago=30, rid=None, site_code=None):
    return {"resourceType": "Observation", "id": rid or f"o-{code}-{value}", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PID}"},
            "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def egfr(value, days_ago=30):
    return obs("98979-8", value, "mL/min/{1.73_m2}", days_ago, rid=f"egfr-{value}")


def t_score(value, days_ago=60):
    return obs("38264-8", value, "1", days_ago, rid=f"t-{value}")   # DXA hip T-score


def therapy(text="Alendronate 70 mg weekly", days_ago=10, status="active"):
    return {"resourceType": "MedicationStatement", "id": f"ms-{days_ago}", "status": status,
            "subject": {"reference": f"Patient/{PID}"}, "medicationCodeableConcept": {"text": text},
            "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat()}


def run(rules, *resources):
    return evaluate(normalize([patient(), *resources] if not any(
        r.get("resourceType") == "Patient" for r in resources) else list(resources), PID, rules, as_of=AS_OF), rules)


def bone_codes(findings):
    return [f.code for f in findings if not f.code.startswith("vitamin-d")]


# HEDIS OMW sites (hip, vertebra, forearm/wrist, humerus, pelvis), within 730 days (service policy),
# age >= 50, no osteoporosis therapy since the fracture.
@pytest.mark.parametrize("resources,expected", [
    ([fracture(HIP, 400)], ["fracture-treatment-gap"]),                        # hip 400 days ago
    ([fracture(RADIUS, 500)], ["fracture-treatment-gap"]),                     # wrist/forearm
    ([fracture("M80.0B1A", 300, system=ICD)], ["fracture-treatment-gap"]),     # pelvis (VSAC 1050)
    ([fracture(HAND, 300)], []),                                               # hand: not a gap site
    ([fracture(HIP, 800)], []),                                                # older than 730 days
    ([fracture(HIP, None)], []),                                               # no onset: history, never recent
    ([fracture(HIP, 400), therapy(days_ago=100)], []),                         # treated since the fracture
    ([fracture(HIP, 400), therapy(days_ago=600, status="completed")],          # a course that ended before
     ["fracture-treatment-gap"]),                                               # the fracture: untreated since
])
def test_fracture_treatment_gap(rules, resources, expected):
    assert bone_codes(run(rules, *resources)) == expected


def test_gap_needs_age_50(rules):
    assert bone_codes(run(rules, patient(birth="1980-01-01"), fracture(HIP, 400))) == []


def test_gap_is_the_one_bone_card_and_states_osteoporosis_by_fracture(rules):
    findings = run(rules, fracture(HIP, 400), t_score(-1.9, days_ago=50))   # low bone mass by DXA
    assert bone_codes(findings) == ["fracture-treatment-gap"]               # no low-bone-mass card beside it
    (gap,) = [f for f in findings if f.code == "fracture-treatment-gap"]
    assert "clinical-osteoporosis" in gap.flags and "dxa-since-fracture" in gap.flags
    assert gap.variables.fracture == "hip" and gap.variables.diagnosis == "osteoporosis by fracture"
    assert "order-dxa" not in gap.suggestions                               # a DXA since the fracture


@pytest.mark.parametrize("extra,draft,flags", [
    ([egfr(60)], True, set()),                          # eGFR >= 35 (label): alendronate drafted
    ([egfr(34)], False, set()),                         # below the label's 35
    ([egfr(25)], False, {"kidney-ckd-mbd"}),            # CKD G4 by eGFR < 30 (KDIGO 4.3)
    ([], False, set()),                                 # kidney function unknown: no draft
    ([egfr(60), fracture(VERTEBRA, 700, rid="v2")], False, {"very-high-risk"}),  # multiple fractures
])
def test_alendronate_draft_only_when_safe_and_first_line(rules, extra, draft, flags):
    # a hip fracture 400 days ago (not within the 12 months that make risk very high by itself)
    (gap,) = [f for f in run(rules, fracture(HIP, 400), *extra) if f.code == "fracture-treatment-gap"]
    assert ("draft-alendronate" in gap.suggestions) is draft
    assert flags <= gap.flags
    assert "order-dxa" in gap.suggestions                 # no DXA since the fracture


def test_fracture_within_12_months_is_very_high_risk_no_draft(rules):
    (gap,) = [f for f in run(rules, fracture(HIP, 100), egfr(70)) if f.code == "fracture-treatment-gap"]
    assert "very-high-risk" in gap.flags and "draft-alendronate" not in gap.suggestions


def test_treated_hip_fracture_with_low_bone_mass_is_osteoporosis_by_fracture(rules):
    findings = run(rules, fracture(HIP, 400), t_score(-1.9), therapy(days_ago=300))
    (bone,) = [f for f in findings if f.code in ("osteoporosis", "low-bone-mass")]
    assert bone.code == "osteoporosis" and bone.variables.grade == "clinical-fracture"
    assert bone.variables.fracture == "hip"


def test_untreated_osteoporosis_by_dxa_gets_first_line_advice_and_a_draft(rules):
    (bone,) = [f for f in run(rules, t_score(-2.8), egfr(50)) if f.code == "osteoporosis"]
    assert "draft-alendronate" in bone.suggestions
    (bone,) = [f for f in run(rules, t_score(-3.2), egfr(50)) if f.code == "osteoporosis"]
    assert "very-high-risk" in bone.flags and "draft-alendronate" not in bone.suggestions   # T < -3.0


# Vitamin D, Endocrine Society 2024 default: no insufficiency card for the general population; the
# bone-health target (AACE/ACE 2020: >= 30 ng/mL = 75 nmol/L) only with an established bone indication.
@pytest.mark.parametrize("value,unit,indication,expected", [
    (25, "ng/mL", False, None),
    (25, "ng/mL", True, "vitamin-d-below-bone-target"),
    (62, "nmol/L", True, "vitamin-d-below-bone-target"),      # 24.8 ng/mL
    (75, "nmol/L", True, None),                               # the target as stated in nmol/L
    (30, "ng/mL", True, None),
    (19, "ng/mL", False, "vitamin-d-deficiency"),             # IOM 2011 < 20 ng/mL
    (11, "ng/mL", False, "vitamin-d-deficiency"),             # severe < 12
])
def test_bone_target_only_for_an_established_bone_indication(rules, value, unit, indication, expected):
    code = "14635-7" if unit == "nmol/L" else "62292-8"
    extra = [fracture(HIP, None)] if indication else []        # a fracture history: an established indication
    got = [f.code for f in run(rules, obs(code, value, unit), *extra) if f.code.startswith("vitamin-d")]
    assert got == ([expected] if expected else [])


def test_2011_profile_keeps_its_insufficiency_card():
    rules_2011 = load_rules(Config(vitamin_d_profile="endocrine-society-2011"))
    got = [f.code for f in run(rules_2011, obs("62292-8", 25, "ng/mL")) if f.code.startswith("vitamin-d")]
    assert got == ["vitamin-d-insufficiency"]
