"""bmd-significant-loss: FHIR resources go through normalize and evaluate. The table is written from
the ISCD Adult Official Positions (precision assessment: LSC = 2.77 x the precision error; minimum
acceptable precision per technologist 1.9 % lumbar spine -> LSC 5.3 %, 1.8 % total hip -> 5.0 %,
2.5 % femoral neck -> 6.9 %; a change is significant when it equals or exceeds the LSC; BMD in
g/cm2 is compared, devices without cross-calibration are not)."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from cds.cards.builder import build_card
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
PID = "bmd1"
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
SPINE, HIP, HIP_LEFT, FEMUR, RADIUS = "24966-4", "38261-4", "46278-8", "24701-5", "24890-6"


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def patient():
    return {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1950-03-04"}


def bmd(code, value, days_ago, unit="g/cm2", rid=None, comparator=None):
    qty = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if comparator:
        qty["comparator"] = comparator
    return {"resourceType": "Observation", "id": rid or f"bmd-{code}-{value}-{days_ago}", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]}, "subject": {"reference": f"Patient/{PID}"},
            "effectiveDateTime": (AS_OF - timedelta(days=days_ago)).isoformat(), "valueQuantity": qty}


def losses(rules, *resources):
    facts = normalize([patient(), *resources], PID, rules, as_of=AS_OF)
    return [f for f in evaluate(facts, rules) if f.code == "bmd-significant-loss"], facts


# (previous, latest) g/cm2 at one site, 2 years apart; the expected result from the site's LSC.
@pytest.mark.parametrize("code,previous,latest,expected", [
    (SPINE, 1.000, 0.947, True),     # 5.3 % = LSC 5.3 % (equals: significant, ISCD "equal or exceed")
    (SPINE, 1.000, 0.948, False),    # 5.2 % < 5.3 %
    (SPINE, 0.900, 0.800, True),     # 11.1 %
    (HIP, 1.000, 0.950, True),       # 5.0 % = LSC 5.0 % (total hip)
    (HIP, 1.000, 0.951, False),      # 4.9 % < 5.0 %
    (HIP_LEFT, 0.800, 0.760, True),  # 5.0 %, left total hip compared with itself
    (HIP, 0.800, 0.850, False),      # a gain is never a loss
    (FEMUR, 1.000, 0.800, False),    # "femur" (no LSC in the rules): never compared
    (RADIUS, 1.000, 0.800, False),   # radius: no LSC in the rules
])
@pytest.mark.parametrize("unit", ["g/cm2", "g/cm-2"])   # both UCUM spellings of g/cm² (FHIR core example)
def test_loss_against_the_site_lsc(rules, code, previous, latest, expected, unit):
    found, _ = losses(rules, bmd(code, previous, 760, unit), bmd(code, latest, 30, unit))
    assert bool(found) is expected
    if expected:
        v = found[0].variables
        assert (v.value.value, v.previous.value, v.previous_date) == (latest, previous, AS_OF - timedelta(days=760))
        assert float(v.change) >= float(v.lsc)


def test_card_shows_both_values_dates_and_the_percentage(rules):
    (loss,), facts = losses(rules, bmd(HIP, 0.865, 760), bmd(HIP, 0.812, 30))
    card = build_card(loss, facts, rules)
    new_day, old_day = (AS_OF - timedelta(days=30)).isoformat(), (AS_OF - timedelta(days=760)).isoformat()
    assert card["indicator"] == "warning"
    assert "0.812 g/cm²" in card["summary"] and "0.865" in card["summary"] and "6.1%" in card["summary"]
    assert new_day in card["summary"] and old_day in card["summary"] and len(card["summary"]) < 140
    assert f"BMD, total hip: 0.812 g/cm², {new_day}" in card["detail"]
    assert f"BMD, total hip: 0.865 g/cm², {old_day}" in card["detail"]
    assert "least significant change of 5.0%" in card["detail"] and len(card["detail"]) <= 600


def test_shown_percentage_never_contradicts_the_lsc(rules, tmp_path):
    # 5.25 % against a facility LSC of 5.25 %: one decimal ("5.2") would read as below it
    (loss,), _ = losses(load_rules_with_lsc(tmp_path, {"total-hip": 5.25}), bmd(HIP, 1.000, 760), bmd(HIP, 0.9475, 30))
    assert float(loss.variables.change) >= 5.25 and loss.variables.lsc == "5.25"


def load_rules_with_lsc(tmp_path, table):
    """The shipped rules with a facility's own LSC figures (bone.yaml lsc_percent)."""
    import shutil

    import yaml
    src = Config().rules_dir
    dst = tmp_path / "rules"
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "bone.yaml").read_text())
    data["lsc_percent"] = table
    (dst / "bone.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_rules(Config(rules_dir=dst))


def test_facility_lsc_overrides_the_default(rules, tmp_path):
    pair = (bmd(SPINE, 1.000, 760), bmd(SPINE, 0.960, 30))    # 4.0 %: below the ISCD default 5.3 %
    assert losses(rules, *pair)[0] == []
    facility = load_rules_with_lsc(tmp_path, {"lumbar-spine": 3.0})
    assert len(losses(facility, *pair)[0]) == 1


@pytest.mark.parametrize("resources", [
    # same-day duplicates are one scan, never "the previous" scan
    [bmd(HIP, 1.000, 30, rid="a"), bmd(HIP, 0.900, 30, rid="b")],
    # the previous scan's results disagree on its day: no comparison on a guess
    [bmd(HIP, 1.000, 760, rid="a"), bmd(HIP, 0.900, 760, rid="b"), bmd(HIP, 0.800, 30)],
    # a value sent as a range
    [bmd(HIP, 1.000, 760), bmd(HIP, 0.800, 30, comparator="<")],
    # the latest scan in mg/cm2 (another device's report, not accepted): the usable two are not the latest
    [bmd(HIP, 1.000, 1500), bmd(HIP, 0.900, 760), bmd(HIP, 800, 30, unit="mg/cm2")],
    # a left hip is never compared with a right or unsided one
    [bmd(HIP_LEFT, 1.000, 760), bmd("46279-6", 0.800, 30)],
    # only one scan
    [bmd(HIP, 0.800, 30)],
])
def test_no_comparison_without_two_clean_scans(rules, resources):
    assert losses(rules, *resources)[0] == []


def with_device(res, reference=None, display=None):
    res = dict(res)
    res["device"] = {k: v for k, v in (("reference", reference), ("display", display)) if v}
    return res


@pytest.mark.parametrize("old_device,new_device,compared", [
    ({"reference": "Device/dxa-1"}, {"reference": "Device/dxa-1"}, True),     # the same device
    ({"reference": "Device/dxa-1"}, {"reference": "Device/dxa-2"}, False),    # two devices: not compared
    ({"display": "Hologic Horizon A"}, {"display": "GE Lunar iDXA"}, False),
    ({"reference": "Device/dxa-1"}, None, True),                              # one not named: compared
])
def test_scans_of_two_named_devices_are_not_compared(rules, old_device, new_device, compared):
    old, new = bmd(HIP, 1.000, 760), bmd(HIP, 0.900, 30)
    if old_device:
        old = with_device(old, **old_device)
    if new_device:
        new = with_device(new, **new_device)
    assert bool(losses(rules, old, new)[0]) is compared


def test_an_invalid_device_drops_the_result_it_is_on(rules):
    bad = dict(bmd(HIP, 0.900, 30), device={"reference": 42})
    found, facts = losses(rules, bmd(HIP, 1.000, 760), bad)
    assert found == [] and any("device" in e for e in facts.excluded)


def test_identical_same_day_duplicates_count_once(rules):
    found, _ = losses(rules, bmd(HIP, 1.000, 760, rid="a"), bmd(HIP, 0.900, 30, rid="b"), bmd(HIP, 0.900, 30, rid="c"))
    assert len(found) == 1 and found[0].variables.previous.value == 1.000


def test_latest_two_scans_are_compared_not_the_oldest(rules):
    # 1.000 -> 0.930 (-7 %) -> 0.920 (-1.1 % since the previous scan): no significant loss now
    assert losses(rules, bmd(HIP, 1.000, 1500), bmd(HIP, 0.930, 760), bmd(HIP, 0.920, 30))[0] == []


def test_on_therapy_note_and_no_card_for_the_deceased(rules):
    therapy = {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
               "subject": {"reference": f"Patient/{PID}"}, "medicationCodeableConcept": {"text": "Alendronate 70 mg"}}
    (loss,), _ = losses(rules, bmd(SPINE, 1.0, 760), bmd(SPINE, 0.9, 30), therapy)
    assert "on-therapy" in loss.flags
    dead = dict(patient(), deceasedBoolean=True)
    facts = normalize([dead, bmd(SPINE, 1.0, 760), bmd(SPINE, 0.9, 30)], PID, rules, as_of=AS_OF)
    assert evaluate(facts, rules) == []
