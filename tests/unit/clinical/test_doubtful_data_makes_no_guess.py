"""Doubtful data makes no card built on a guess: conflicting same-day results, future dates,
newer unusable results, unknown or child ages. Facts are built directly, or through normalize from real FHIR JSON where the
defect sits between the two."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from cds.config import Config
from cds.clinical.evaluate import evaluate
from cds.clinical.facts import MedicationFact, Measurement, PatientFacts
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)
CANONICAL = {"vitamin-d-25oh": "ng/mL", "t-score": "{T-score}", "z-score": "{Z-score}",
             "bmd": "g/cm2", "appendicular-lean-mass": "kg", "appendicular-lean-mass-index": "kg/m2",
             "grip-strength": "kg", "gait-speed": "m/s", "body-height": "m"}


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def m(kind, value, days_ago=10, hour=0, **kw):
    when = datetime.combine(AS_OF - timedelta(days=days_ago), datetime.min.time(),
                            timezone.utc) + timedelta(hours=hour)
    unit = kw.pop("unit", CANONICAL[kind])
    return Measurement(kind=kind, value=float(value), unit=unit, when=when, code=f"test|{kind}",
                       display=kind, original_value=float(value), original_unit=unit, **kw)


def facts(*measurements, gender="female", age=70, medications=(), unusable=None):
    by_kind: dict[str, list[Measurement]] = {}
    for x in sorted(measurements, key=lambda x: x.when, reverse=True):
        by_kind.setdefault(x.kind, []).append(x)
    meds: dict[str, list[MedicationFact]] = {}
    for med in medications:
        meds.setdefault(med.category, []).append(med)
    return PatientFacts(patient_id="p1", as_of=AS_OF, gender=gender,
                        birth_date=date(AS_OF.year - age, 1, 1), measurements=by_kind,
                        medications=meds, unusable=dict(unusable or {}))


def codes(findings):
    return [f.code for f in findings if f.code != "dxa-screening-due"]


# --------------------------------------------------------------------------- DXA dates
def test_newer_dxa_without_t_scores_is_not_replaced_by_an_older_scans_t_score(rules):
    """The most recent DXA date (BMD only, no T-score sent) decides: the T-score of a scan six
    years older is not read as if it were the latest one (with a 'DXA is old' note)."""
    old_t = m("t-score", -3.0, days_ago=2200, site="lumbar-spine")
    new_bmd = m("bmd", 0.95, days_ago=30, site="lumbar-spine")
    assert codes(evaluate(facts(old_t), rules)) == ["osteoporosis"]        # the old scan alone
    assert codes(evaluate(facts(old_t, new_bmd), rules)) == []


def test_bmd_on_the_same_date_as_the_t_scores_still_diagnoses(rules):
    day = [m("t-score", -2.7, days_ago=30, site="total-hip"),
           m("bmd", 0.6, days_ago=30, hour=1, site="total-hip")]
    (f,) = [x for x in evaluate(facts(*day), rules) if x.code != "dxa-screening-due"]
    assert f.code == "osteoporosis" and "dxa-old" not in f.flags


# --------------------------------------------------------------------------- vitamin D
@pytest.mark.parametrize("first,second", [(9, 45), (45, 9), (15, 25), (25, 15)])
def test_conflicting_vitamin_d_results_on_one_day_make_no_card(rules, first, second):
    """Two 25(OH)D results on the same day that classify differently (e.g. a D3-fraction and a
    total result, or a repeat) leave the status unknown: no card on whichever came first."""
    same_day = [m("vitamin-d-25oh", first, days_ago=20), m("vitamin-d-25oh", second, days_ago=20)]
    assert codes(evaluate(facts(*same_day), rules)) == []


def test_agreeing_vitamin_d_results_on_one_day_still_make_the_card(rules):
    same_day = [m("vitamin-d-25oh", 14, days_ago=20), m("vitamin-d-25oh", 16, days_ago=20, hour=2)]
    (f,) = codes(evaluate(facts(*same_day), rules))
    assert f == "vitamin-d-deficiency"
    # the older day's conflicting value does not matter: only the latest day is read
    older = m("vitamin-d-25oh", 45, days_ago=40)
    assert codes(evaluate(facts(older, *same_day), rules)) == ["vitamin-d-deficiency"]


def _vitamin_d_med(status, current):
    return MedicationFact(category="vitamin-d", code="text|cholecalciferol", display="cholecalciferol",
                          status=status, current=current)


@pytest.mark.parametrize("status,current,draft_offered", [
    ("active", True, False),        # taking it now: no second prescription
    ("completed", False, True),     # a finished course: deficient again, a new course is offered
    ("stopped", False, True),
])
def test_only_a_current_vitamin_d_supplement_suppresses_the_treatment_draft(rules, status, current,
                                                                            draft_offered):
    f = facts(m("vitamin-d-25oh", 9), medications=[_vitamin_d_med(status, current)])
    (finding,) = [x for x in evaluate(f, rules) if x.code == "vitamin-d-deficiency"]
    assert ("draft-vitamin-d-course" in finding.suggestions) is draft_offered
    assert ("on-vitamin-d" in finding.flags) is not draft_offered


# --------------------------------------------------------------------------- sarcopenia
def test_low_mass_with_an_unreadable_grip_result_is_not_called_strength_not_measured(rules):
    low_mass = m("appendicular-lean-mass", 12)
    assert codes(evaluate(facts(low_mass), rules)) == ["low-muscle-mass"]
    # grip WAS measured (e.g. sent in a unit the service cannot read): it may have been normal,
    # which would mean no card at all; "grip strength not measured" would be false
    assert codes(evaluate(facts(low_mass, unusable={"grip-strength": 1}), rules)) == []


def test_low_grip_with_an_unreadable_mass_result_says_mass_is_indeterminate(rules):
    grip = m("grip-strength", 10, laterality="left")
    (f,) = [x for x in evaluate(facts(grip, unusable={"appendicular-lean-mass": 1}), rules)
            if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" in f.flags


def test_unreadable_grip_through_normalize(rules):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}

    def obs(oid, system, code, value, unit):
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-11-01",
                "code": {"coding": [{"system": system, "code": code}]},
                "valueQuantity": {"value": value, "unit": unit, "code": unit,
                                  "system": "http://unitsofmeasure.org"}}
    asm = obs("o1", "urn:mskcds", "appendicular-lean-mass", 12, "kg")
    grip_mg = obs("o2", "http://loinc.org", "83174-3", 30, "mg")      # not a force unit
    f = normalize([patient, asm, grip_mg], "p1", rules, as_of=AS_OF)
    assert f.unusable.get("grip-strength") == 1
    assert codes(evaluate(f, rules)) == []


# --------------------------------------------------------------------------- future dates
# normalize keeps a result dated up to one day after "today" (clock skew); evaluate does not
# read it. It is still the newest result: the older one is not read in its place.
def test_a_newer_future_dated_vitamin_d_result_is_not_replaced_by_an_older_one(rules):
    older_low = m("vitamin-d-25oh", 9, days_ago=20)
    assert codes(evaluate(facts(older_low), rules)) == ["vitamin-d-deficiency"]
    assert codes(evaluate(facts(older_low, m("vitamin-d-25oh", 40, days_ago=-1)), rules)) == []


def test_a_future_dated_dxa_is_not_replaced_by_an_older_scan(rules):
    older = m("t-score", -3.0, days_ago=20, site="lumbar-spine")
    assert codes(evaluate(facts(older), rules)) == ["osteoporosis"]
    newer = m("t-score", 0.5, days_ago=-1, site="lumbar-spine")
    assert codes(evaluate(facts(older, newer), rules)) == []


def test_a_future_dated_grip_is_not_called_not_measured(rules):
    low_mass = m("appendicular-lean-mass", 12)
    assert codes(evaluate(facts(low_mass, m("grip-strength", 30, days_ago=-1)), rules)) == []


def test_a_future_dated_gait_speed_does_not_leave_an_older_slow_one_grading_severity(rules):
    base = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 12)]
    slow = m("gait-speed", 0.5, days_ago=30)
    assert codes(evaluate(facts(*base, slow), rules)) == ["sarcopenia-severe"]
    (f,) = [x for x in evaluate(facts(*base, slow, m("gait-speed", 1.2, days_ago=-1)), rules)
            if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-confirmed" and f.variables.gait is None
    assert "gait-not-measured" not in f.flags


def test_future_dated_results_through_normalize(rules):
    """Dated tomorrow (inside normalize's one-day tolerance): kept by normalize, and the older
    deficient 25(OH)D makes no card."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}

    def vd(oid, value, day):
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": day,
                "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
                "valueQuantity": {"value": value, "unit": "ng/mL", "code": "ng/mL",
                                  "system": "http://unitsofmeasure.org"}}
    f = normalize([patient, vd("o1", 9, "2026-11-01"), vd("o2", 40, "2026-11-23")], "p1", rules,
                  as_of=AS_OF)
    assert len(f.all("vitamin-d-25oh")) == 2
    assert codes(evaluate(f, rules)) == []


# --------------------------------------------------------------------------- same-day conflicts
@pytest.mark.parametrize("order", [(0.6, 1.1), (1.1, 0.6)])
def test_conflicting_gait_speeds_on_one_day_do_not_grade_severity(rules, order):
    """One slow and one normal gait speed on the latest day: severity is unknown, whichever
    was listed first (before: severe or not depending on the order)."""
    base = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 12)]
    gaits = [m("gait-speed", v, days_ago=15) for v in order]
    (f,) = [x for x in evaluate(facts(*base, *gaits), rules) if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-confirmed" and f.variables.gait is None
    assert "gait-not-measured" not in f.flags
    # two slow speeds on one day agree: severe
    slow = [m("gait-speed", 0.6, days_ago=15), m("gait-speed", 0.7, days_ago=15)]
    assert codes(evaluate(facts(*base, *slow), rules)) == ["sarcopenia-severe"]


@pytest.mark.parametrize("order", [(12, 18), (18, 12)])
def test_conflicting_muscle_mass_on_one_day_is_not_read_either_way(rules, order):
    grip = m("grip-strength", 10, laterality="left")
    masses = [m("appendicular-lean-mass", v, days_ago=15) for v in order]
    (f,) = [x for x in evaluate(facts(grip, *masses), rules) if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" in f.flags


def test_conflicting_heights_on_one_day_leave_a_computed_index_unknown(rules):
    # woman, ASM 15.5 kg: height 1.70 m → 5.36 kg/m2 (low); 1.60 m → 6.05 kg/m2 (normal)
    data = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 15.5),
            m("body-height", 1.70, days_ago=15), m("body-height", 1.60, days_ago=15)]
    (f,) = [x for x in evaluate(facts(*data), rules) if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-probable" and "mass-indeterminate" in f.flags
    # heights that agree on the classification (1.70 / 1.71 m) still confirm
    agree = data[:2] + [m("body-height", 1.70, days_ago=15), m("body-height", 1.71, days_ago=15)]
    assert codes(evaluate(facts(*agree), rules)) == ["sarcopenia-confirmed"]


# --------------------------------------------------------------------------- dosing by age
def _vd_facts(birth, value=9):
    f = facts(m("vitamin-d-25oh", value))
    f.birth_date = birth
    f.birth_date_range = None if birth is None else (birth, birth)
    return f


@pytest.mark.parametrize("birth,adult", [
    (date(2024, 1, 1), False),       # 2 years old: the adult 50,000 IU weekly course is wrong
    (date(2008, 11, 23), False),     # 17 (18 tomorrow)
    (date(2007, 11, 23), False),     # 18: Endocrine Society 2011 treats 1-18 year olds as children
    (date(2007, 11, 22), True),      # 19 today
    (date(1950, 1, 1), True),
    (None, False),                   # age unknown: no adult dosing on a guess
])
def test_adult_regimen_only_for_patients_known_to_be_adults(rules, birth, adult):
    (f,) = [x for x in evaluate(_vd_facts(birth), rules) if x.code == "vitamin-d-deficiency"]
    assert ("draft-vitamin-d-course" in f.suggestions) is adult
    assert ("no-adult-regimen" in f.flags) is not adult


def test_partial_birth_date_of_an_adult_still_gets_the_regimen(rules):
    f = _vd_facts(None)
    f.birth_date_range = (date(1950, 1, 1), date(1950, 12, 31))
    (finding,) = [x for x in evaluate(f, rules) if x.code == "vitamin-d-deficiency"]
    assert "draft-vitamin-d-course" in finding.suggestions


def test_child_card_has_no_dosing_text():
    from cds.cards.builder import build_cards

    rules = load_rules(Config(vitamin_d_profile="endocrine-society-2011"))   # it has an insufficiency band

    f = _vd_facts(date(2020, 6, 1))
    cards = build_cards(evaluate(f, rules), f, rules)
    (card,) = [c for c in cards if c["source"]["topic"]["code"] == "vitamin-d-deficiency"]
    assert "50,000" not in card["detail"] and "IU" not in card["detail"]
    assert not any(a["resource"]["resourceType"] == "MedicationRequest"
                   for s in card.get("suggestions", ()) for a in s["actions"])
    f = _vd_facts(date(2020, 6, 1), value=25)          # insufficiency: no daily-dose text either
    (card,) = [c for c in build_cards(evaluate(f, rules), f, rules)
               if c["source"]["topic"]["code"] == "vitamin-d-insufficiency"]
    assert "IU" not in card["detail"]
    assert "Adult treatment regimen not offered" in card["detail"]


# --------------------------------------------------------------------------- sarcopenia in children
@pytest.mark.parametrize("age,adult", [(8, False), (17, False), (18, True), (70, True)])
def test_adult_sarcopenia_cut_offs_do_not_label_children(rules, age, adult):
    """An 8-year-old's grip (NIH Toolbox grip tests are used from age 3) is naturally below
    16 kg: that is not probable sarcopenia."""
    found = codes(evaluate(facts(m("grip-strength", 10, laterality="left"), age=age), rules))
    assert found == (["sarcopenia-probable"] if adult else [])


def test_sarcopenia_needs_a_known_age(rules):
    f = facts(m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 12))
    f.birth_date = None
    assert codes(evaluate(f, rules)) == []
    f.birth_date_range = (date(1950, 1, 1), date(1950, 12, 31))    # partial birthDate, adult
    assert codes(evaluate(f, rules)) == ["sarcopenia-confirmed"]


def test_an_unreadable_gait_speed_is_not_called_not_on_record(rules):
    data = [m("grip-strength", 10, laterality="left"), m("appendicular-lean-mass", 12)]
    (f,) = [x for x in evaluate(facts(*data), rules) if x.code != "dxa-screening-due"]
    assert "gait-not-measured" in f.flags
    (f,) = [x for x in evaluate(facts(*data, unusable={"gait-speed": 1}), rules)
            if x.code != "dxa-screening-due"]
    assert f.code == "sarcopenia-confirmed" and "gait-not-measured" not in f.flags


# --------------------------------------------------------------------------- newest result unusable
def _unread(f, **days_ago):
    for kind, ago in days_ago.items():
        kind = kind.replace("_", "-")
        f.unusable[kind] = f.unusable.get(kind, 0) + 1
        f.unusable_latest[kind] = AS_OF - timedelta(days=ago)
    return f


def test_newer_unusable_dxa_result_stops_the_older_scan_being_read(rules):
    older = m("t-score", -3.0, days_ago=400, site="lumbar-spine")
    assert codes(evaluate(_unread(facts(older), t_score=500), rules)) == ["osteoporosis"]
    assert codes(evaluate(_unread(facts(older), t_score=30), rules)) == []


def test_same_day_unusable_site_never_gives_a_milder_label(rules):
    spine = m("t-score", -1.5, days_ago=30, site="lumbar-spine")     # low bone mass alone
    assert codes(evaluate(_unread(facts(spine), t_score=30), rules)) == []
    worst = m("t-score", -3.0, days_ago=30, site="lumbar-spine")     # already the worst band
    assert codes(evaluate(_unread(facts(worst), t_score=30), rules)) == ["osteoporosis"]


def test_newer_unusable_grip_mass_or_gait_is_unknown(rules):
    grip = m("grip-strength", 10, days_ago=100, laterality="left")
    mass = m("appendicular-lean-mass", 12, days_ago=100)
    slow = m("gait-speed", 0.5, days_ago=100)
    assert codes(evaluate(facts(grip, mass, slow), rules)) == ["sarcopenia-severe"]
    assert codes(evaluate(_unread(facts(grip, mass, slow), grip_strength=10), rules)) == []
    (f,) = codes(evaluate(_unread(facts(grip, mass, slow), appendicular_lean_mass=10), rules))
    assert f == "sarcopenia-probable"
    (f,) = codes(evaluate(_unread(facts(grip, mass, slow), gait_speed=10), rules))
    assert f == "sarcopenia-confirmed"
    # unusable results older than the usable ones change nothing
    assert codes(evaluate(_unread(facts(grip, mass, slow), grip_strength=300, gait_speed=300,
                                  appendicular_lean_mass=300), rules)) == ["sarcopenia-severe"]


def test_same_day_unusable_z_score_does_not_stop_t_scores_at_50_and_over(rules):
    spine = m("t-score", -1.5, days_ago=30, site="lumbar-spine")
    assert codes(evaluate(_unread(facts(spine), z_score=30, bmd=30), rules)) == ["low-bone-mass"]
