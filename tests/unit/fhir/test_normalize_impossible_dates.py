"""Dates that cannot be true: a birth date in the future or beyond any lifespan never becomes an
age, a scan dated before birth makes no finding, and the newest unusable result is remembered."""
from __future__ import annotations

from datetime import date

import pytest

from cds.config import Config
from cds.clinical.evaluate import evaluate
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

AS_OF = date(2026, 11, 22)


@pytest.fixture(scope="module")
def rules():
    return load_rules(Config())


def patient(birth, gender="female"):
    return {"resourceType": "Patient", "id": "p1", "gender": gender, "birthDate": birth}


def z_score(value, day="2026-11-01"):
    return {"resourceType": "Observation", "id": "z1", "status": "final",
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": day,
            "code": {"coding": [{"system": "http://loinc.org", "code": "85394-5"}]},
            "valueQuantity": {"value": value, "unit": "1", "code": "1",
                              "system": "http://unitsofmeasure.org"}}


@pytest.mark.parametrize("birth", ["2030-01-01", "2026-11-23", "2027", "2026-12"])
def test_birth_date_after_today_is_no_age(rules, birth):
    f = normalize([patient(birth), z_score(-2.5)], "p1", rules, as_of=AS_OF)
    assert f.birth_date is None and f.birth_date_range is None and f.age is None
    assert any(r.startswith("Patient: birthDate") for r in f.excluded)
    assert [x.code for x in evaluate(f, rules)] == []     # no "below expected for age" at -3


@pytest.mark.parametrize("birth,kept", [("1800-01-01", False), ("1900-01-01", False),
                                        ("1906-11-22", True), ("1950-01-01", True),
                                        ("2026-11-22", True)])
def test_implausible_age_is_no_age(rules, birth, kept):
    """No one alive is 126 or 226 years old: a birthDate that says so is an entry error (or a
    placeholder such as 1900-01-01), and a 'woman aged 226' screening card is a guess."""
    f = normalize([patient(birth)], "p1", rules, as_of=AS_OF)
    assert (f.birth_date is not None) is kept
    if not kept:
        assert [x.code for x in evaluate(f, rules)] == []


def test_dxa_dated_before_birth_makes_no_finding(rules):
    f = normalize([patient("2026-11-10"), z_score(-2.5, day="2026-11-01")], "p1", rules, as_of=AS_OF)
    assert f.birth_date == date(2026, 11, 10)
    assert [x.code for x in evaluate(f, rules)] == []


# --------------------------------------------------------------------------- newest result unusable
def vd(oid, value, day, unit="ng/mL"):
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": day,
            "code": {"coding": [{"system": "http://loinc.org", "code": "62292-8"}]},
            "valueQuantity": {"value": value, "unit": unit, "code": unit,
                              "system": "http://unitsofmeasure.org"}}


def test_newest_unusable_result_day_is_recorded(rules):
    f = normalize([patient("1950-01-01"), vd("o1", 9, "2026-03-01"), vd("o2", 45, "2026-11-01", "ng/ml"),
                   vd("o3", 40, "2026-06-01", "ng/ml")], "p1", rules, as_of=AS_OF)
    assert f.unusable == {"vitamin-d-25oh": 2}
    assert f.unusable_latest == {"vitamin-d-25oh": date(2026, 11, 1)}


def test_an_older_result_is_not_read_when_the_newest_could_not_be(rules):
    """The newest 25(OH)D came with a unit the service does not accept ('ng/ml' is not the UCUM
    code): the status today is unknown, and the deficient result from March is not read in
    its place."""
    older = vd("o1", 9, "2026-03-01")
    base = normalize([patient("1950-01-01"), older], "p1", rules, as_of=AS_OF)
    assert "vitamin-d-deficiency" in [x.code for x in evaluate(base, rules)]
    newer_odd = vd("o2", 45, "2026-11-01", "ng/ml")
    f = normalize([patient("1950-01-01"), older, newer_odd], "p1", rules, as_of=AS_OF)
    assert "vitamin-d-deficiency" not in [x.code for x in evaluate(f, rules)]
    # an unusable result OLDER than the usable one does not matter
    f = normalize([patient("1950-01-01"), vd("o3", 9, "2026-11-01"), vd("o4", 45, "2026-03-01", "ng/ml")],
                  "p1", rules, as_of=AS_OF)
    assert "vitamin-d-deficiency" in [x.code for x in evaluate(f, rules)]
