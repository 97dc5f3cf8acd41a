"""A DXA DiagnosticReport (LOINC 38269-7 "DXA Skeletal system Study report", as in the FHIR R4 core
example diagnosticreport-example-dxa; 83311-1 "Bone density quantitative measurement by DXA panel")
is a DXA done even when none of its results can be read: USPSTF 2025 screening is for people
without a DXA, so no dxa-screening-due; a later unreadable report is the latest DXA, so no bone card
from an older scan and no BMD comparison across it (ISCD 2023: the latest and the previous scan).
FHIR resources go through normalize and evaluate."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
PID = "dr1"
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def patient(birth="1958-01-10"):   # a woman of 68: DXA screening due when no DXA is on record
    return {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": birth}


def report(days_ago=100, code="38269-7", status="final", results=(), subject=PID, rid="dxa-report"):
    """Shaped as the FHIR R4 core example DiagnosticReport/102 (a conclusion, no coded results)."""
    res = {"resourceType": "DiagnosticReport", "id": rid, "status": status,
           "code": {"coding": [{"system": LOINC, "code": code}], "text": "DXA BONE DENSITOMETRY"},
           "subject": {"reference": f"Patient/{subject}"},
           "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
           "issued": (AS_OF - timedelta(days=days_ago - 1)).isoformat() + "T09:23:00+10:00",
           "conclusionCode": [{"coding": [{"system": SNOMED, "code": "391040000",
                                           "display": "At risk of osteoporotic fracture"}]}]}
    if results:
        res["result"] = [{"reference": f"Observation/{r}"} for r in results]
    return res


def obs(code, value, unit, days_ago, rid):
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PID}"},
            "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def run(rules, *resources, who=None):
    facts = normalize([who or patient(), *resources], PID, rules, as_of=AS_OF)
    return evaluate(facts, rules), facts


def codes(findings):
    return [f.code for f in findings]


@pytest.mark.parametrize("resources,screening", [
    ([], True),                                          # nothing on record: screening due
    ([report()], False),                                 # a DXA report, no readable result: a DXA was done
    ([report(code="83311-1")], False),                   # the DXA panel code
    ([report(status="amended")], False),
    ([report(status="preliminary")], False),
    ([report(status="cancelled")], True),                # not done
    ([report(status="entered-in-error")], True),
    ([report(subject="someone-else")], True),            # another patient's report: never a fact here
    ([report(code="24627-2")], True),                    # not a DXA report code: not read
    ([report(days_ago=-30)], True),                      # dated after today: not read
])
def test_a_dxa_report_means_a_dxa_was_done(rules, resources, screening):
    findings, _ = run(rules, *resources)
    assert ("dxa-screening-due" in codes(findings)) is screening


def test_a_report_with_readable_results_is_read_through_them(rules):
    t = obs("38264-8", -2.7, "{T-score}", 100, "t1")   # DXA hip T-score on the report's day
    findings, facts = run(rules, report(results=("t1",)), t)
    assert codes(findings) == ["osteoporosis"]
    assert "dxa-report-unread" not in findings[0].flags


@pytest.mark.parametrize("unit", ["{T-score}", "1"])
def test_a_later_unreadable_report_is_the_latest_dxa(rules, unit):
    old = obs("38264-8", -2.7, unit, 900, "t-old")
    assert codes(run(rules, old)[0]) == ["osteoporosis"]
    assert codes(run(rules, old, report(days_ago=60))[0]) == []   # no card from the older scan, no screening


@pytest.mark.parametrize("unit", ["g/cm2", "g/cm-2"])
def test_no_bmd_comparison_across_an_unreadable_report(rules, unit):
    pair = (obs("38261-4", 0.900, unit, 760, "b1"), obs("38261-4", 0.800, unit, 30, "b2"))   # -11 %
    assert "bmd-significant-loss" in codes(run(rules, *pair)[0])
    assert "bmd-significant-loss" not in codes(run(rules, *pair, report(days_ago=400))[0])


def test_fracture_card_says_the_dxa_since_could_not_be_read(rules):
    hip = {"resourceType": "Condition", "id": "fx", "subject": {"reference": f"Patient/{PID}"},
           "code": {"coding": [{"system": SNOMED, "code": "431031001"}]},
           "onsetDateTime": (AS_OF - timedelta(days=400)).isoformat()}
    findings, facts = run(rules, hip, report(days_ago=200))
    (gap,) = [f for f in findings if f.code == "fracture-treatment-gap"]
    assert {"dxa-since-fracture", "dxa-report-unread"} <= gap.flags
    assert "order-dxa" not in gap.suggestions            # a DXA was done since the fracture
    detail = build_card(gap, facts, rules)["detail"]
    assert "no result that can be read" in detail and len(detail) <= 600
    # a report from before the fracture is not a DXA since it
    findings, _ = run(rules, hip, report(days_ago=500))
    (gap,) = [f for f in findings if f.code == "fracture-treatment-gap"]
    assert "dxa-report-unread" not in gap.flags and "order-dxa" in gap.suggestions


def test_an_invalid_report_is_excluded_with_a_reason(rules):
    bad = report()
    bad["result"] = "not a list"   # R4B: result is a list of References
    findings, facts = run(rules, bad)
    assert any(e.startswith("DiagnosticReport:") for e in facts.excluded)
    assert facts.reports == []
