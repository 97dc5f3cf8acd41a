"""T- or Z-score: ISCD 2023 Adult Official Positions (T-scores and the WHO classification for
postmenopausal women and men 50 and older; Z-scores, not T-scores, for premenopausal women and men
under 50). A woman under 50 with a postmenopausal state recorded (SNOMED 76498008, 307429007:
rules/valuesets.yaml) is read by T-score; otherwise age 50 is the menopause proxy and the card says
so (service policy: below 60 at the scan). The age that decides is the age at the scan; the card
shows the age now and, where it differs, the age at the scan. FHIR through normalize and evaluate."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
PID = "mp1"
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
SPINE_T, SPINE_Z = "38267-1", "85394-5"
BONE = ("osteoporosis", "low-bone-mass", "bmd-below-expected-for-age")


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def born(age_at_scan, scan_days_ago):
    """A birthDate giving ``age_at_scan`` completed years on the scan day (birthday 100 days before it)."""
    scan = AS_OF - timedelta(days=scan_days_ago)
    return (scan - timedelta(days=100)).replace(year=(scan - timedelta(days=100)).year - age_at_scan).isoformat()


def dxa(t, z, days_ago, t_unit="{T-score}", z_unit="{Z-score}"):
    def obs(code, value, unit):
        return {"resourceType": "Observation", "id": f"o-{code}", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PID}"},
                "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
    return [obs(SPINE_T, t, t_unit), obs(SPINE_Z, z, z_unit)]


def menopause(code="76498008", onset_days_ago=None):
    res = {"resourceType": "Condition", "id": f"mp-{code}", "subject": {"reference": f"Patient/{PID}"},
           "code": {"coding": [{"system": SNOMED, "code": code}]}}
    if onset_days_ago is not None:
        res["onsetDateTime"] = (AS_OF - timedelta(days=onset_days_ago)).isoformat()
    return res


def bone(rules, birth, *resources, gender="female"):
    patient = {"resourceType": "Patient", "id": PID, "gender": gender, "birthDate": birth}
    facts = normalize([patient, *resources], PID, rules, as_of=AS_OF)
    return [f for f in evaluate(facts, rules) if f.code in BONE], facts


# T -2.7 (osteoporosis range) and Z -2.2 (below the expected range) on one scan 40 days ago.
@pytest.mark.parametrize("age,gender,extra,expected,flag", [
    (45, "female", [menopause()], "osteoporosis", "menopause-recorded"),              # postmenopausal: T
    (45, "female", [menopause("307429007")], "osteoporosis", "menopause-recorded"),   # "After menopause"
    (45, "female", [menopause(onset_days_ago=400)], "osteoporosis", "menopause-recorded"),   # before the scan
    (45, "female", [menopause(onset_days_ago=10)], "bmd-below-expected-for-age", "menopause-by-age"),  # after it
    (45, "female", [], "bmd-below-expected-for-age", "menopause-by-age"),            # none recorded: Z
    (55, "female", [], "osteoporosis", "menopause-by-age"),                           # >= 50 by proxy: T
    (65, "female", [], "osteoporosis", None),                                         # past 60: no note
    (45, "male", [], "bmd-below-expected-for-age", None),                             # men under 50: Z
    (55, "male", [], "osteoporosis", None),                                           # men 50 and over: T
])
@pytest.mark.parametrize("units", [("{T-score}", "{Z-score}"), ("1", "1")])   # both unitless UCUM codes
def test_t_or_z_score_by_menopause_then_age(rules, age, gender, extra, expected, flag, units):
    found, _ = bone(rules, born(age, 40), *dxa(-2.7, -2.2, 40, *units), *extra, gender=gender)
    assert [f.code for f in found] == [expected]
    flags = found[0].flags & {"menopause-recorded", "menopause-by-age"}
    assert flags == ({flag} if flag else set())


def test_card_says_age_was_the_menopause_proxy(rules):
    (found,), facts = bone(rules, born(45, 40), *dxa(-2.7, -2.2, 40))
    assert "No menopause status on record: age 50 is taken as its proxy." in build_card(found, facts, rules)["detail"]
    (found,), facts = bone(rules, born(45, 40), *dxa(-2.7, -2.2, 40), menopause())
    assert "A postmenopausal state is on record" in build_card(found, facts, rules)["detail"]


@pytest.mark.parametrize("age_at_scan,expected", [
    (49, "bmd-below-expected-for-age"),   # 49 at the scan (52 now): Z-scores, whatever the age now
    (50, "osteoporosis"),                 # 50 at the scan: T-scores
])
def test_age_at_the_scan_decides(rules, age_at_scan, expected):
    found, _ = bone(rules, born(age_at_scan, 1100), *dxa(-2.7, -2.2, 1100), gender="male")
    assert [f.code for f in found] == [expected]
    assert found[0].variables.age == age_at_scan and found[0].variables.age_now == age_at_scan + 3


def test_card_shows_age_now_and_at_the_scan(rules):
    (old,), facts = bone(rules, born(66, 1100), *dxa(-2.7, -2.2, 1100), gender="male")
    assert "- Patient: 69 years (66 at the scan)" in build_card(old, facts, rules)["detail"]
    (recent,), facts = bone(rules, born(66, 40), *dxa(-2.7, -2.2, 40), gender="male")
    detail = build_card(recent, facts, rules)["detail"]
    assert "- Patient: 66 years" in detail and "at the scan" not in detail
