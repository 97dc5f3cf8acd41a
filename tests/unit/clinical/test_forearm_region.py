"""Forearm DXA: only the 33 % (one-third) radius diagnoses (ISCD 2023 Adult Official Positions,
forearm BMD for diagnosis; AACE/ACE 2020: "1/3 radius (33% radius)"). LOINC's radius codes name no
region, so the region is read from the result's words; region names as in Bonnick, "The forearm in
densitometry: nomenclature" (33 % or 1/3, 50 %, 10 %, 5-mm / 8-mm, ultradistal). FHIR resources go
through normalize and evaluate."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
PID = "fa1"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
RADIUS_T, RADIUS_T_LEFT, SPINE_T, RADIUS_Z = "38265-5", "80944-2", "38267-1", "80932-7"


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def patient(birth="1950-03-04"):
    return {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": birth}


def score(code, value, text=None, body_site=None, unit="{T-score}", days_ago=40, rid=None):
    res = {"resourceType": "Observation", "id": rid or f"s-{code}-{value}", "status": "final",
           "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PID}"},
           "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
           "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
    if text:
        res["code"]["text"] = text
    if body_site:
        res["bodySite"] = body_site
    return res


def bone(rules, *resources, birth="1950-03-04"):
    facts = normalize([patient(birth), *resources], PID, rules, as_of=AS_OF)
    found = [f for f in evaluate(facts, rules)
             if f.code in ("osteoporosis", "low-bone-mass", "bmd-below-expected-for-age")]
    return found, facts


# (the radius result's words, where they are sent) -> what a radius T-score of -2.8 diagnoses
@pytest.mark.parametrize("text,body_site,expected,not_stated", [
    ("DXA Radius 33% T-score", None, "osteoporosis", False),          # 33 % radius: diagnoses
    ("Forearm 1/3 radius", None, "osteoporosis", False),              # one-third radius
    (None, {"text": "Left radius, one-third site"}, "osteoporosis", False),   # region in bodySite
    ("Radius UD T-score", None, None, False),                         # ultradistal: never diagnoses
    ("Ultradistal radius", None, None, False),
    ("Total forearm", None, None, False),                             # total forearm: never diagnoses
    (None, {"text": "Radius mid"}, None, False),                      # mid radius
    ("Radius 33% and UD", None, None, False),                         # two regions named: not read
    (None, None, "osteoporosis", True),                               # no region: read as 33 %, said so
    ("DXA Radius and Ulna [T-score] Bone density", None, "osteoporosis", True),   # LOINC words: no region
])
@pytest.mark.parametrize("unit", ["{T-score}", "1"])   # T-scores sent with either unitless UCUM code
def test_radius_region_decides_whether_it_diagnoses(rules, text, body_site, expected, not_stated, unit):
    found, _ = bone(rules, score(RADIUS_T, -2.8, text, body_site, unit))
    assert [f.code for f in found] == ([expected] if expected else [])
    if expected:
        assert ("radius-region-not-stated" in found[0].flags) is not_stated


def test_another_region_leaves_the_central_sites_to_decide(rules):
    # spine -1.6 (low bone mass) with an ultradistal radius -2.9: low bone mass, not osteoporosis
    found, _ = bone(rules, score(SPINE_T, -1.6), score(RADIUS_T_LEFT, -2.9, "Radius UD"))
    assert [(f.code, f.variables.site) for f in found] == [("low-bone-mass", "lumbar-spine")]


def test_a_later_scan_of_another_region_is_still_the_latest_scan(rules):
    # the older spine result is not read as current when the latest DXA was an ultradistal radius
    found, _ = bone(rules, score(SPINE_T, -2.7, days_ago=900), score(RADIUS_T, -2.9, "Radius UD", days_ago=30))
    assert found == []


def test_z_scores_follow_the_same_region_rule(rules):
    young = "1985-01-01"
    assert bone(rules, score(RADIUS_Z, -2.4, "Radius UD", unit="{Z-score}"), birth=young)[0] == []
    (found,), _ = bone(rules, score(RADIUS_Z, -2.4, "Radius 33%", unit="{Z-score}"), birth=young)
    assert found.code == "bmd-below-expected-for-age"


def test_card_says_the_region_was_not_stated(rules):
    (found,), facts = bone(rules, score(RADIUS_T, -2.8))
    card = build_card(found, facts, rules)
    assert "names no region" in card["detail"] and "33% (one-third) radius" in card["detail"]
    assert len(card["detail"]) <= 600
    (stated,), facts = bone(rules, score(RADIUS_T, -2.8, "Radius 33%"))
    assert "names no region" not in build_card(stated, facts, rules)["detail"]


def test_an_invalid_body_site_is_not_read_as_no_region(rules):
    # bodySite is read for the region, so it is validated: an invalid one drops the result
    # (never "no region stated, read as 33 %")
    found, facts = bone(rules, score(RADIUS_T, -2.8, body_site={"text": 5}))
    assert found == [] and any("bodySite" in e for e in facts.excluded)
