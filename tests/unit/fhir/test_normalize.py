"""cds/fhir/normalize.py: every normalize rule, with hand-made and real (US Core, FHIR core) resources."""
from __future__ import annotations

import copy
import json
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from cds.clinical.facts import PatientFacts
from cds.fhir.normalize import normalize, parse_datetime
from cds.config import Config
from cds.knowledge.rules import load_rules
from cds.knowledge.terminology import load_terminology

from rules_support import rules_copy

REPO = Path(__file__).resolve().parents[3]
PID = "p1"
AS_OF = date(2026, 11, 22)
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

VITD, VITD3, VITD_MOL = "62292-8", "1989-3", "14635-7"
T_SPINE, T_FEMUR_L, T_HIP, T_HIP_L, T_CALC = "38267-1", "80948-3", "38264-8", "80946-7", "38266-3"
Z_SPINE, BMD_SPINE = "85394-5", "24966-4"
GRIP_R, GRIP_L, GAIT = "83174-3", "83173-5", "83172-7"
HEIGHT, WEIGHT, BMI = "8302-2", "29463-7", "39156-5"


@pytest.fixture(scope="module")
def term(tmp_path_factory):
    return load_terminology(rules_copy(tmp_path_factory.mktemp("norm")))


def obs(code: str, value: Any = None, unit: str | None = None, *, system: str = LOINC,
        when: str | None = "2026-10-02", status: str = "final", subject: str = f"Patient/{PID}",
        ucum: bool = True, rid: str = "o1", **extra: Any) -> dict[str, Any]:
    o: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": status,
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": subject}}
    if when is not None:
        o["effectiveDateTime"] = when
    if value is not None:
        q: dict[str, Any] = {"value": value}
        if unit is not None:
            q["unit"] = unit
            if ucum:
                q.update(system=UCUM, code=unit)
        o["valueQuantity"] = q
    o.update(extra)
    return o


def run(term, *resources, patient_id: str = PID, as_of: date = AS_OF) -> PatientFacts:
    return normalize(list(resources), patient_id, term, as_of)


def only(facts: PatientFacts, kind: str):
    values = facts.all(kind)
    assert len(values) == 1, (values, facts.excluded)
    return values[0]


# ----------------------------------------------------------------------------- units
# value sent → canonical value (worked out by hand: 1 ng/mL = 2.496 nmol/L, [in_i] = 2.54 cm,
# [lb_av] = 0.45359237 kg, [lbf_av] = 0.45359237 kgf, 1 kgf = 9.80665 N)
CONVERSIONS = [
    (VITD, 25, "ng/mL", "vitamin-d-25oh", 25.0, "ng/mL"),
    (VITD, 25, "ug/L", "vitamin-d-25oh", 25.0, "ng/mL"),
    (VITD_MOL, 49.92, "nmol/L", "vitamin-d-25oh", 20.0, "ng/mL"),
    (VITD_MOL, 50, "nmol/L", "vitamin-d-25oh", 20.032051, "ng/mL"),
    (VITD_MOL, 29.952, "nmol/L", "vitamin-d-25oh", 12.0, "ng/mL"),
    (VITD_MOL, 250, "nmol/L", "vitamin-d-25oh", 100.160256, "ng/mL"),
    (VITD3, 18, "ng/mL", "vitamin-d-25oh", 18.0, "ng/mL"),
    (BMD_SPINE, 0.812, "g/cm2", "bmd", 0.812, "g/cm2"),
    (BMD_SPINE, 0.887, "g/cm-2", "bmd", 0.887, "g/cm2"),
    (T_SPINE, -2.6, "{T-score}", "t-score", -2.6, "{T-score}"),
    (T_SPINE, -2.6, "{T-Score}", "t-score", -2.6, "{T-score}"),
    (T_SPINE, -2.6, "1", "t-score", -2.6, "{T-score}"),
    (T_SPINE, -2.6, None, "t-score", -2.6, "{T-score}"),
    (Z_SPINE, -2.1, "{Z-score}", "z-score", -2.1, "{Z-score}"),
    (Z_SPINE, -2.1, "{Z-Score}", "z-score", -2.1, "{Z-score}"),
    (T_CALC, -1.2, "{T-score}", "t-score-peripheral", -1.2, "{T-score}"),
    (GRIP_R, 26, "kg", "grip-strength", 26.0, "kg"),
    (GRIP_R, 26, "kgf", "grip-strength", 26.0, "kg"),
    (GRIP_R, 50, "[lbf_av]", "grip-strength", 22.679619, "kg"),
    (GRIP_R, 156.9064, "N", "grip-strength", 16.0, "kg"),
    (GAIT, 0.8, "m/s", "gait-speed", 0.8, "m/s"),
    (GAIT, 75, "cm/s", "gait-speed", 0.75, "m/s"),
    (HEIGHT, 165, "cm", "body-height", 1.65, "m"),
    (HEIGHT, 1.65, "m", "body-height", 1.65, "m"),
    (HEIGHT, 70, "[in_i]", "body-height", 1.778, "m"),
    (WEIGHT, 70, "kg", "body-weight", 70.0, "kg"),
    (WEIGHT, 70500, "g", "body-weight", 70.5, "kg"),
    (WEIGHT, 185, "[lb_av]", "body-weight", 83.914588, "kg"),
    (BMI, 22.5, "kg/m2", "bmi", 22.5, "kg/m2"),
]


@pytest.mark.parametrize("code, value, unit, kind, expected, canonical", CONVERSIONS)
def test_units_converted_to_canonical(term, code, value, unit, kind, expected, canonical):
    m = only(run(term, obs(code, value, unit)), kind)
    assert m.value == pytest.approx(expected, abs=1e-6)
    assert m.unit == canonical
    assert m.original_value == value
    assert m.original_unit == (unit or "")


@pytest.mark.parametrize("value, unit, expected", [
    (18.5, "kg", 18.5), (18500, "g", 18.5), (18.5, "[lb_av]", 8.391459)])
def test_lean_mass_units(term, value, unit, expected):
    m = only(run(term, obs("appendicular-lean-mass", value, unit, system="urn:mskcds")),
             "appendicular-lean-mass")
    assert m.value == pytest.approx(expected, abs=1e-6)


def test_lean_mass_index_kg_m2(term):
    m = only(run(term, obs("appendicular-lean-mass-index", 5.4, "kg/m2", system="urn:mskcds")),
             "appendicular-lean-mass-index")
    assert (m.value, m.unit) == (5.4, "kg/m2")


REJECTED_UNITS = [
    (obs(VITD, 2.1, "mg/dL"), "unit 'mg/dL' not accepted for vitamin-d-25oh"),
    (obs(VITD, 30, None), "no unit for vitamin-d-25oh"),
    (obs(VITD, 30, "ng/ml"), "unit 'ng/ml' not accepted"),                    # case matters in UCUM
    (obs(VITD, 30, "ng/mL", ucum=False), None),                               # unit only: exact UCUM → ok
    (obs(VITD, 30, "ng/dL", ucum=False), "unit 'ng/dL' not accepted"),
    (obs(HEIGHT, 66, "in", ucum=False), "unit 'in' not accepted for body-height"),
    (obs(HEIGHT, 66, "[in_us]"), "unit '[in_us]' not accepted"),
    (obs(T_SPINE, -2.6, "{Z-score}"), "unit '{Z-score}' not accepted for t-score"),
    (obs(T_SPINE, -2.6, "%"), "unit '%' not accepted for t-score"),
    (obs(GRIP_R, 30, "lb"), "unit 'lb' not accepted for grip-strength"),
    (obs(WEIGHT, 70, "kg", valueQuantity={"value": 70, "system": "http://example.org/units",
                                          "code": "kg"}), "unit is not a UCUM code"),
    # the code says moles/volume, the unit says mass/volume (or the other way): no guess
    (obs(VITD_MOL, 30, "ng/mL"), "contradicts the code's property"),
    (obs(VITD, 75, "nmol/L"), "contradicts the code's property"),
]


@pytest.mark.parametrize("resource, reason", REJECTED_UNITS)
def test_unit_rules(term, resource, reason):
    facts = run(term, resource)
    if reason is None:
        assert len(facts.measurements["vitamin-d-25oh"]) == 1
        assert facts.excluded == []
    else:
        assert facts.measurements == {}
        assert len(facts.excluded) == 1 and reason in facts.excluded[0], facts.excluded
        assert facts.excluded[0].startswith("Observation: ")


# ----------------------------------------------------------------------------- status
@pytest.mark.parametrize("status, kept", [
    ("final", True), ("amended", True), ("corrected", True), ("preliminary", False),
    ("registered", False), ("entered-in-error", False), ("cancelled", False), ("unknown", False),
    (None, False)])
def test_observation_status(term, status, kept):
    o = obs(VITD, 15, "ng/mL", status=status)
    if status is None:
        del o["status"]
    facts = run(term, o)
    assert bool(facts.all("vitamin-d-25oh")) is kept
    if not kept:
        assert "status" in facts.excluded[0]


# ----------------------------------------------------------------------------- dates
UTC = timezone.utc


@pytest.mark.parametrize("fields, expected", [
    ({"effectiveDateTime": "2026-10-02T08:30:00+02:00"}, datetime(2026, 10, 2, 6, 30, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02T23:30:00-05:00"}, datetime(2026, 10, 3, 4, 30, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02T08:30:00Z"}, datetime(2026, 10, 2, 8, 30, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02T08:30:00"}, datetime(2026, 10, 2, 8, 30, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02"}, datetime(2026, 10, 2, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10"}, datetime(2026, 10, 1, tzinfo=UTC)),
    ({"effectiveDateTime": "2026"}, datetime(2026, 1, 1, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02T08:30:00.123456789+00:00"},
     datetime(2026, 10, 2, 8, 30, 0, 123456, tzinfo=UTC)),
    ({"effectiveInstant": "2026-10-02T08:30:00Z"}, datetime(2026, 10, 2, 8, 30, tzinfo=UTC)),
    ({"effectivePeriod": {"start": "2026-09-01", "end": "2026-09-03"},
      "issued": "2026-09-10T00:00:00Z"}, datetime(2026, 9, 3, tzinfo=UTC)),
    ({"effectivePeriod": {"start": "2026-09-01"}, "issued": "2026-09-10T07:00:00Z"},
     datetime(2026, 9, 10, 7, tzinfo=UTC)),
    ({"issued": "2026-09-10T07:00:00+01:00"}, datetime(2026, 9, 10, 6, tzinfo=UTC)),
    ({"effectiveDateTime": "2026-10-02", "issued": "2026-10-05T00:00:00Z"},
     datetime(2026, 10, 2, tzinfo=UTC)),
])
def test_date_sources(term, fields, expected):
    o = obs(VITD, 15, "ng/mL", when=None, **fields)
    m = only(run(term, o), "vitamin-d-25oh")
    assert m.when == expected and m.when.tzinfo is not None


@pytest.mark.parametrize("fields, reason", [
    ({}, "no date"),
    ({"effectivePeriod": {"start": "2026-09-01"}}, "no date"),
    ({"effectiveDateTime": "2026-13-01"}, "not a valid FHIR dateTime"),
    ({"effectiveDateTime": "02/10/2026"}, "not a valid FHIR dateTime"),
    ({"effectiveDateTime": "2026-11-24"}, "dated in the future"),
])
def test_dates_that_exclude(term, fields, reason):
    facts = run(term, obs(VITD, 15, "ng/mL", when=None, **fields))
    assert facts.measurements == {}
    assert reason in facts.excluded[0]


def test_tomorrow_is_tolerated_for_time_zones(term):
    assert run(term, obs(VITD, 15, "ng/mL", when="2026-11-23T01:00:00+05:00")).all("vitamin-d-25oh")


def test_parse_datetime_rejects_garbage():
    for bad in (None, 20261002, "", "2026-02-30", "2026-10-02T25:00:00Z", "yesterday",
                "2026-10-02T08:30:00+24:00"):
        assert parse_datetime(bad) is None, bad


def test_newest_first_per_kind(term):
    facts = run(term,
                obs(VITD, 10, "ng/mL", when="2025-12-01", rid="a"),
                obs(VITD, 30, "ng/mL", when="2026-10-01T10:00:00Z", rid="b"),
                obs(VITD_MOL, 50, "nmol/L", when="2026-06-01", rid="c"),
                obs(VITD, 22, "ng/mL", when="2026-10-01T09:00:00-03:00", rid="d"))  # 12:00Z
    assert [m.resource_id for m in facts.all("vitamin-d-25oh")] == ["d", "b", "c", "a"]
    assert facts.latest("vitamin-d-25oh").value == 22


# ----------------------------------------------------------------------------- patient safety
@pytest.mark.parametrize("reference, kept", [
    (f"Patient/{PID}", True),
    (f"https://ehr.example.org/fhir/Patient/{PID}", True),
    (f"Patient/{PID}/_history/3", True),
    ("Patient/p2", False),
    (f"Patient/{PID}0", False),
    (f"https://ehr.example.org/fhir/Patient/{PID}x", False),
    (f"xPatient/{PID}", False),
    (f"Group/{PID}", False),
    ("urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427", False),
    (None, False),
])
def test_subject_must_be_the_patient(term, reference, kept):
    o = obs(VITD, 15, "ng/mL", subject=reference or "x")
    if reference is None:
        del o["subject"]
    facts = run(term, o)
    assert bool(facts.all("vitamin-d-25oh")) is kept
    if not kept:
        assert facts.excluded == ["Observation: subject is not the patient in context"]


@pytest.mark.parametrize("focus, kept", [
    (None, True),
    ([{"reference": f"Patient/{PID}"}], True),
    ([{"reference": "Patient/fetus-1"}], False),
    ([{"reference": f"Patient/{PID}"}, {"reference": "Group/donors"}], False),
    ([{"display": "donor kidney"}], False),
    ([], False),
])
def test_observation_about_another_focus_is_dropped(term, focus, kept):
    o = obs(VITD, 15, "ng/mL")
    if focus is not None:
        o["focus"] = focus
    facts = run(term, o)
    assert bool(facts.all("vitamin-d-25oh")) is kept
    if not kept:
        assert facts.excluded == ["Observation: about a focus other than the patient"]


def test_patient_of_another_id_is_dropped(term):
    facts = run(term, {"resourceType": "Patient", "id": "p2", "gender": "female",
                       "birthDate": "1940-01-01"})
    assert (facts.gender, facts.birth_date) == (None, None)
    assert facts.excluded == ["Patient: not the patient in context"]


@pytest.mark.parametrize("gender, expected", [
    ("female", "female"), ("male", "male"), ("other", None), ("unknown", None), (None, None)])
def test_gender(term, gender, expected):
    p = {"resourceType": "Patient", "id": PID, "birthDate": "1950-03-04"}
    if gender:
        p["gender"] = gender
    facts = run(term, p)
    assert facts.gender == expected and facts.excluded == []


def test_invalid_gender_code_makes_patient_invalid(term):
    facts = run(term, {"resourceType": "Patient", "id": PID, "gender": 7})
    assert facts.gender is None
    assert facts.excluded[0].startswith("Patient: not valid FHIR R4")


@pytest.mark.parametrize("birth, birth_date, age, age_range", [
    ("1950-03-04", date(1950, 3, 4), 76, (76, 76)),
    ("1961-11-23", date(1961, 11, 23), 64, (64, 64)),   # 65th birthday is tomorrow
    ("1961-11-22", date(1961, 11, 22), 65, (65, 65)),
    ("1961-11", None, None, (64, 65)),                 # ambiguous around 65 → age unknown
    ("1961", None, None, (64, 65)),
    ("1940", None, None, (85, 86)),
    ("1950-02-30", None, None, None),
    (None, None, None, None),
])
def test_birth_date(term, birth, birth_date, age, age_range):
    p = {"resourceType": "Patient", "id": PID}
    if birth:
        p["birthDate"] = birth
    facts = run(term, p)
    assert (facts.birth_date, facts.age, facts.age_range) == (birth_date, age, age_range)


def test_other_resource_types_are_ignored(term):
    facts = run(term, {"resourceType": "Encounter", "id": "e", "status": "finished"},
                {"resourceType": "DiagnosticReport", "id": "d", "status": "final",
                 "code": {"text": "DXA"}}, "not a resource", None, 42)
    assert facts.measurements == {} and facts.excluded == []


def test_excluded_reasons_carry_no_patient_data(term):
    secret_pid, secret_id = "PATIENT-XYZ-42", "RESOURCE-SECRET-9"
    resources = [
        obs(VITD, 987.654, "mg/dL", rid=secret_id, subject=f"Patient/{secret_pid}"),
        obs(VITD, 987.654, "mg/dL", rid=secret_id + "b", subject="Patient/OTHER-PERSON-77"),
        obs(VITD, 9876.54, "ng/mL", rid=secret_id + "c", subject=f"Patient/{secret_pid}"),
        obs(T_SPINE, -2.6, "1", rid=secret_id + "d", subject=f"Patient/{secret_pid}",
            when="1999-99-99"),
        obs(VITD, 12.5, "ng/mL", rid=secret_id + "f", subject=f"Patient/{secret_pid}",
            status="Jane Roe 1931"),
        obs(VITD, 12.5, "Jane Roe 1931 ng", rid=secret_id + "g", subject=f"Patient/{secret_pid}"),
        obs(VITD, 12.5, "ng/mL", rid=secret_id + "e", subject=f"Patient/{secret_pid}",
            valueQuantity={"value": 12.5, "unit": "ng/mL", "system": UCUM, "code": "ng/mL",
                           "extension": "not-a-list-SECRETVALUE"}),
        {"resourceType": "Patient", "id": "OTHER-PERSON-77", "birthDate": "1931-07-08"},
    ]
    facts = normalize(resources, secret_pid, term, AS_OF)
    assert len(facts.excluded) == 8, facts.excluded
    text = " ".join(facts.excluded)
    for secret in (secret_pid, secret_id, "OTHER-PERSON", "987", "9876", "1999", "1931", "Jane",
                   "SECRETVALUE", "12.5"):
        assert secret not in text, (secret, facts.excluded)


def test_duplicate_resource_counts_once(term):
    o = obs(VITD, 15, "ng/mL", rid="same")
    assert len(run(term, o, copy.deepcopy(o)).all("vitamin-d-25oh")) == 1


# ----------------------------------------------------------------------------- FHIR validation
@pytest.mark.parametrize("change, field", [
    (lambda o: o["code"]["coding"][0].update(version={"v": 1}), "code"),
    (lambda o: o["subject"].update(reference=f"Patient/{PID}", unexpected=1), "subject"),
    (lambda o: o.update(component=[{"valueString": "x"}]), "component"),   # component needs a code
    (lambda o: o["valueQuantity"].update(value=float("nan")), None),
])
def test_invalid_fhir_is_excluded_not_an_error(term, change, field):
    o = obs(VITD, 15, "ng/mL")
    change(o)
    facts = run(term, o)
    assert facts.measurements == {}
    assert len(facts.excluded) == 1
    if field is not None:
        assert facts.excluded[0].startswith("Observation: not valid FHIR R4 (" + field)


def test_unused_elements_do_not_hide_a_good_result(term):
    o = obs(VITD, 15, "ng/mL", performer=[{"reference": "Practitioner/x", "bogus": True}])
    assert run(term, o).latest("vitamin-d-25oh").value == 15


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("resource, reason", [
    (obs(VITD, None, None, dataAbsentReason={"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]}),
     "no value (dataAbsentReason)"),
    (obs(VITD, None, None, valueString="twelve"), "not a Quantity"),
    (obs(VITD, None, None), "no value for vitamin-d-25oh"),
    (obs(VITD, 15, "ng/mL", valueQuantity={"unit": "ng/mL", "system": UCUM, "code": "ng/mL"}),
     "valueQuantity without value"),
    (obs(VITD, 15, "ng/mL", valueQuantity={"value": "15", "system": UCUM, "code": "ng/mL"}),
     "not a number"),
    (obs(VITD, 15, "ng/mL", valueQuantity={"value": 15, "comparator": "ad", "system": UCUM,
                                           "code": "ng/mL"}), "comparator"),
])
def test_values_that_exclude(term, resource, reason):
    facts = run(term, resource)
    assert facts.measurements == {}
    assert reason in facts.excluded[0], facts.excluded


@pytest.mark.parametrize("comparator", ["<", "<=", ">", ">="])
def test_comparator_is_kept(term, comparator):
    o = obs(VITD, 8, "ng/mL")
    o["valueQuantity"]["comparator"] = comparator
    assert only(run(term, o), "vitamin-d-25oh").comparator == comparator


def test_comparator_kept_through_conversion(term):
    o = obs(VITD_MOL, 375, "nmol/L")
    o["valueQuantity"]["comparator"] = ">"
    m = only(run(term, o), "vitamin-d-25oh")
    assert (m.comparator, m.value, m.original_value) == (">", pytest.approx(150.240385), 375)


# plausibility (bounds in the canonical unit; written here from the justification in
# rules/data_quality.yaml, so a change there must be deliberate)
@pytest.mark.parametrize("code, value, unit, kept", [
    (VITD, 0, "ng/mL", False), (VITD, 0.5, "ng/mL", True), (VITD, 1000, "ng/mL", True),
    (VITD, 1001, "ng/mL", False), (VITD_MOL, 2496, "nmol/L", True), (VITD_MOL, 2500, "nmol/L", False),
    (VITD, -3, "ng/mL", False),
    (T_SPINE, -7, "1", True), (T_SPINE, -7.1, "1", False), (T_SPINE, 7, "1", True),
    (T_SPINE, 7.5, "1", False), (T_SPINE, 0.812, "1", True),
    (BMD_SPINE, 812, "g/cm2", False), (BMD_SPINE, 0.1, "g/cm2", True),
    (GRIP_R, 0, "kg", True), (GRIP_R, 121, "kg", False),
    (GAIT, 0, "m/s", False), (GAIT, 0.05, "m/s", True), (GAIT, 3.2, "m/s", False),
    (HEIGHT, 170, "m", False), (HEIGHT, 1.70, "m", True), (HEIGHT, 17, "cm", False),
    (WEIGHT, 70000, "kg", False), (BMI, 220, "kg/m2", False),
])
def test_plausibility(term, code, value, unit, kept):
    facts = run(term, obs(code, value, unit))
    assert bool(facts.measurements) is kept
    if not kept:
        assert "outside the plausible range" in facts.excluded[0]


# ----------------------------------------------------------------------------- codes
def test_two_matching_codings_are_one_measurement(term):
    o = obs(VITD, 15, "ng/mL")
    o["code"]["coding"].append({"system": LOINC, "code": VITD3})
    o["code"]["coding"].append({"system": "http://acme.example/lab", "code": "VITD"})
    facts = run(term, o)
    assert len(facts.all("vitamin-d-25oh")) == 1 and facts.excluded == []


def test_codings_for_different_kinds_are_a_contradiction(term):
    o = obs(T_SPINE, -2.6, "1")
    o["code"]["coding"].append({"system": LOINC, "code": Z_SPINE})
    facts = run(term, o)
    assert facts.measurements == {}
    assert "codes for different kinds (t-score, z-score)" in facts.excluded[0]


def test_general_and_lateral_code_merge_to_the_specific_one(term):
    o = obs(T_HIP, -2.0, "1")
    o["code"]["coding"].append({"system": LOINC, "code": T_HIP_L})
    m = only(run(term, o), "t-score")
    assert (m.site, m.laterality, m.code) == ("total-hip", "left", f"{LOINC}|{T_HIP_L}")


def test_codings_with_different_sites_are_a_contradiction(term):
    o = obs(T_HIP, -2.0, "1")
    o["code"]["coding"].append({"system": LOINC, "code": T_SPINE})
    assert run(term, o).measurements == {}


def test_unknown_code_is_not_a_fact(term):
    facts = run(term, obs("2345-7", 95, "mg/dL", rid="a"), obs("4548-4", 6.1, "%", rid="b"))
    assert facts.measurements == {}
    assert facts.excluded == ["Observation: no code in the value sets"] * 2


def test_code_system_must_match(term):
    assert run(term, obs(VITD, 15, "ng/mL", system="http://loinc.org/")).measurements == {}


def test_grip_keeps_both_hands_with_laterality(term):
    facts = run(term, obs(GRIP_R, 24, "kg", rid="r"), obs(GRIP_L, 27, "kg", rid="l"))
    hands = {m.laterality: m.value for m in facts.all("grip-strength")}
    assert hands == {"right": 24.0, "left": 27.0}


def test_dxa_panel_components(term):
    # a local panel code (not in the value sets) whose components carry LOINC codes
    panel = obs("dxa-panel", None, None, system="http://acme.example/panels", component=[
                    {"code": {"coding": [{"system": LOINC, "code": T_SPINE}]},
                     "valueQuantity": {"value": -2.7, "system": UCUM, "code": "{T-score}"}},
                    {"code": {"coding": [{"system": LOINC, "code": BMD_SPINE}]},
                     "valueQuantity": {"value": 0.79, "system": UCUM, "code": "g/cm2"}},
                    {"code": {"coding": [{"system": LOINC, "code": Z_SPINE}]},
                     "valueQuantity": {"value": -1.0, "system": UCUM, "code": "mg"}},
                    {"code": {"coding": [{"system": "http://acme.example/panels",
                                          "code": "comment"}]},
                     "valueString": "comment"},
                ])
    facts = run(term, panel)
    t = only(facts, "t-score")
    assert (t.value, t.site, t.when) == (-2.7, "lumbar-spine", datetime(2026, 10, 2, tzinfo=UTC))
    assert only(facts, "bmd").value == 0.79
    assert facts.all("z-score") == []
    assert facts.excluded == ["Observation: component: unit 'mg' not accepted for z-score"]


# ----------------------------------------------------------------------------- real data
def test_us_core_dxa_files(term, shared_dir):
    us = shared_dir / "us-core"
    resources = [json.loads(p.read_text()) for p in sorted(us.glob("*.json"))]
    facts = normalize(resources, "example", term, AS_OF)
    assert facts.birth_date == date(1987, 2, 20) and facts.gender is None
    got = {(m.kind, m.site, m.laterality): m.value
           for kind in ("t-score", "z-score", "bmd") for m in facts.all(kind)}
    assert got == {("t-score", "femur", "left"): -1.48, ("t-score", "total-hip", "left"): -1.62,
                   ("z-score", "femur", "left"): 0.05, ("z-score", "total-hip", "left"): -0.19,
                   ("bmd", "femur", "left"): 0.631, ("bmd", "total-hip", "left"): 0.734}
    t = facts.all("t-score")[0]
    assert t.original_unit == "1" and t.unit == "{T-score}"
    assert t.when == datetime(2021, 11, 11, 3, 14, 41, 88720, tzinfo=UTC)   # -08:00 → UTC
    assert only(facts, "body-height").value == pytest.approx(1.11506)
    assert only(facts, "body-weight").value == pytest.approx(20.09414)
    assert only(facts, "bmi").value == 16.2
    assert facts.excluded == []     # DiagnosticReport/Practitioner ignored, nothing dropped


def test_fhir_core_examples(term, shared_dir):
    ex = shared_dir / "fhir-r4-examples"
    load = lambda n: json.loads((ex / n).read_text())  # noqa: E731
    facts = normalize([load("patient-example.json"), load("observation-example-body-height.json"),
                       load("observation-example.json"), load("observation-example-bmi.json"),
                       load("observation-example-bmd.json")], "example", term, AS_OF)
    assert (facts.gender, facts.birth_date) == ("male", date(1974, 12, 25))
    h = only(facts, "body-height")
    assert (h.value, h.original_value, h.original_unit) == (pytest.approx(1.69926),
                                                            pytest.approx(66.9), "[in_i]")
    w = only(facts, "body-weight")   # 29463-7 + 3141-9 + SNOMED codings: one measurement
    assert w.value == pytest.approx(83.914588) and w.original_unit == "[lb_av]"
    assert only(facts, "bmi").value == 16.2
    # the BMD example belongs to Patient/pat2
    assert facts.excluded == ["Observation: subject is not the patient in context"]

    # for pat2 (gender "other"): the BMD example uses g/cm-2 but has no effective[x]/issued
    facts2 = normalize([load("patient-example-b.json"), load("observation-example-bmd.json")],
                       "pat2", term, AS_OF)
    assert facts2.gender is None and facts2.measurements == {}
    assert facts2.excluded == ["Observation: no date (effective[x] or issued)"]
    dated = dict(load("observation-example-bmd.json"), effectiveDateTime="2026-05-01")
    b = only(normalize([dated], "pat2", term, AS_OF), "bmd")
    assert (b.value, b.unit, b.original_unit, b.site) == (0.887, "g/cm2", "g/cm-2", "femur")


def test_synthea_style_t_score(term):
    # Synthea's osteoporosis module writes 38265-5 with unit {T-score}
    m = only(run(term, obs("38265-5", -3.1, "{T-score}")), "t-score")
    assert (m.site, m.value) == ("radius", -3.1)


# ----------------------------------------------------------------------------- conditions
def cond(code: str, system: str = SNOMED, clinical: str | None = "active",
         verification: str | None = None, subject: str = f"Patient/{PID}", rid: str = "c1",
         **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"resourceType": "Condition", "id": rid,
                         "code": {"coding": [{"system": system, "code": code}]},
                         "subject": {"reference": subject}}
    if clinical:
        c["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]}
    if verification:
        c["verificationStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "code": verification}]}
    c.update(extra)
    return c


@pytest.mark.parametrize("clinical, verification, kept", [
    ("active", None, True), ("recurrence", None, True), ("relapse", None, True), (None, None, True),
    ("inactive", None, False), ("resolved", None, False), ("remission", None, False),
    ("active", "confirmed", True), ("active", "provisional", True),
    ("active", "entered-in-error", False), ("active", "refuted", False),
])
def test_condition_status(term, clinical, verification, kept):
    facts = run(term, cond("64859006", clinical=clinical, verification=verification))
    assert facts.has_condition("osteoporosis") is kept
    if not kept:
        assert facts.excluded[0].startswith("Condition: ")


@pytest.mark.parametrize("clinical, abatement, kept", [
    (None, {"abatementDateTime": "2020-05-01"}, False),
    (None, {"abatementString": "resolved in childhood"}, False),
    ("active", {"abatementDateTime": "2020-05-01"}, False),  # violates con-4: no guess
    (None, {}, True),
])
def test_condition_abatement(term, clinical, abatement, kept):
    facts = run(term, cond("64859006", clinical=clinical, **abatement))
    assert facts.has_condition("osteoporosis") is kept


def test_condition_categories_and_onset(term):
    facts = run(term,
                cond("64859006", rid="a", onsetDateTime="2019-04-02"),
                cond("N18.5", system=ICD10, rid="b", onsetPeriod={"start": "2024-01"}),
                cond("Z99.2", system=ICD10, rid="c"),
                cond("htn", system="http://acme.example/problems", rid="d"))  # not ours: no note
    [osteo] = facts.conditions["osteoporosis"]
    assert (osteo.code, osteo.onset) == (f"{SNOMED}|64859006", date(2019, 4, 2))
    assert facts.conditions["ckd-stage-4-5"][0].onset == date(2024, 1, 1)
    assert facts.has_condition("dialysis")
    assert set(facts.conditions) == {"osteoporosis", "ckd-stage-4-5", "dialysis"}
    assert facts.excluded == []


def test_condition_of_another_patient(term):
    facts = run(term, cond("64859006", subject="Patient/p2"))
    assert not facts.conditions
    assert facts.excluded == ["Condition: subject is not the patient in context"]


def test_invalid_condition_is_excluded(term):
    facts = run(term, cond("64859006", onsetDateTime="last spring"))
    assert not facts.conditions and facts.excluded[0].startswith("Condition: not valid FHIR R4")


# ----------------------------------------------------------------------------- medications
def med(concept: dict[str, Any] | None = None, status: str = "active",
        rtype: str = "MedicationRequest", subject: str = f"Patient/{PID}", rid: str = "m1",
        **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"resourceType": rtype, "id": rid, "status": status,
                         "subject": {"reference": subject}}
    if rtype == "MedicationRequest":
        m["intent"] = "order"
    if concept is not None:
        m["medicationCodeableConcept"] = concept
    m.update(extra)
    return m


ALENDRONATE = {"coding": [{"system": RXNORM, "code": "904420",
                           "display": "Alendronic acid 10 MG [Fosamax]"}]}


@pytest.mark.parametrize("rtype, status, kept, current", [
    ("MedicationRequest", "active", True, True),
    ("MedicationRequest", "completed", True, False),
    ("MedicationRequest", "stopped", True, False),
    ("MedicationRequest", "on-hold", True, False),
    ("MedicationRequest", "entered-in-error", False, False),
    ("MedicationRequest", "draft", False, False),
    ("MedicationStatement", "active", True, True),
    ("MedicationStatement", "completed", True, False),
    ("MedicationStatement", "not-taken", False, False),
    ("MedicationStatement", "entered-in-error", False, False),
])
def test_medication_status(term, rtype, status, kept, current):
    facts = run(term, med(ALENDRONATE, status=status, rtype=rtype))
    assert facts.has_medication("osteoporosis-therapy") is kept
    if kept:
        [fact] = facts.medications["osteoporosis-therapy"]
        assert (fact.status, fact.current) == (status, current)
        assert fact.code == f"{RXNORM}|904420"
    else:
        assert facts.excluded[0].startswith(f"{rtype}: status")


@pytest.mark.parametrize("concept, categories", [
    ({"text": "Cholecalciferol 1000 UNT Oral Tablet"}, {"vitamin-d"}),
    ({"coding": [{"system": "http://acme.example/formulary", "code": "VD3-25",
                  "display": "Vitamin D3 25 MCG Oral Capsule"}]},
     {"vitamin-d"}),
    ({"text": "alendronate 70 MG / cholecalciferol 2800 UNT Oral Tablet"},
     {"vitamin-d", "osteoporosis-therapy"}),
    ({"text": "Calcitriol 0.25 MCG Oral Capsule"}, set()),
    ({"text": "Vitamin D"}, set()),     # not specific enough for any keyword
    (ALENDRONATE, {"osteoporosis-therapy"}),
])
def test_medication_code_then_text_keywords(term, concept, categories):
    facts = run(term, med(concept))
    assert set(facts.medications) == categories
    for category in categories:
        fact = facts.medications[category][0]
        assert fact.code.startswith("text|") or fact.code == f"{RXNORM}|904420"


def test_medication_by_reference(term):
    contained = med(None, medicationReference={"reference": "#m"}, contained=[
        {"resourceType": "Medication", "id": "m", "code": ALENDRONATE}])
    facts = run(term, contained)
    assert facts.has_medication("osteoporosis-therapy")
    external = med(None, rid="m2", medicationReference={"reference": "Medication/vd"})
    facts = run(term, external, {"resourceType": "Medication", "id": "vd",
                                 "code": {"text": "Ergocalciferol 50000 UNT Oral Capsule"}})
    assert facts.has_medication("vitamin-d")
    assert not run(term, external).medications     # reference not in the input: nothing known


def test_medication_dates(term):
    facts = run(term, med(ALENDRONATE, authoredOn="2025-03-04T10:00:00Z"),
                med(ALENDRONATE, rtype="MedicationStatement", rid="s",
                    effectivePeriod={"start": "2020-01-15"}))
    assert sorted(f.authored for f in facts.medications["osteoporosis-therapy"]) == \
        [date(2020, 1, 15), date(2025, 3, 4)]


def test_medication_of_another_patient(term):
    facts = run(term, med(ALENDRONATE, subject="Patient/p2"))
    assert not facts.medications
    assert facts.excluded == ["MedicationRequest: subject is not the patient in context"]


# ----------------------------------------------------------------------------- wiring
def test_rules_object_with_terminology(term, tmp_path):
    class WithTerm:
        terminology = term
    o = obs(VITD, 15, "ng/mL")
    assert run(WithTerm(), o).latest("vitamin-d-25oh").value == 15
    # the loaded Rules always carry their Terminology (the rules-dir fallback is gone)
    assert normalize([o], PID, load_rules(Config()), AS_OF).latest("vitamin-d-25oh").value == 15
    for not_rules in (object(), type("Legacy", (), {"source_dir": REPO / "rules"})()):
        with pytest.raises(TypeError):
            normalize([o], PID, not_rules, AS_OF)


@pytest.mark.parametrize("change, reason", [
    (lambda o: o.update(valueString="15"), "not valid FHIR R4 (value[x]"),
    (lambda o: o.update(effectivePeriod={"end": "2026-10-02"}), "not valid FHIR R4 (effective[x]"),
    (lambda o: o.update(id="has spaces and / slashes"), "not valid FHIR R4 (id)"),
    (lambda o: o["valueQuantity"].update(value=float("inf")), "not a number"),
    (lambda o: o["valueQuantity"].update(value=float("nan")), "not a number"),
    (lambda o: o.update(component={"code": {}}), "not valid FHIR R4 (component)"),
])
def test_resource_level_validity(term, change, reason):
    o = obs(VITD, 15, "ng/mL")
    change(o)
    facts = run(term, o)
    assert facts.measurements == {}
    assert reason in facts.excluded[0], facts.excluded


def test_validation_outcome_is_stable_across_calls(term):
    """The validation cache must give the same answer as a first validation."""
    import cds.fhir.normalize as norm
    bad = obs(VITD, 15, "ng/mL", rid="bad")
    bad["subject"]["unexpected"] = True
    good = obs(VITD, 16, "ng/mL", rid="good")
    norm._VALIDATED.clear()
    first = run(term, bad, good)
    second = run(term, bad, good)
    assert first.excluded == second.excluded == ["Observation: not valid FHIR R4 (subject.unexpected)"]
    assert [m.value for m in first.all("vitamin-d-25oh")] == \
        [m.value for m in second.all("vitamin-d-25oh")] == [16.0]


# ----------------------------------------------------------------------------- speed
def typical_request() -> list[dict[str, Any]]:
    """A Patient and 30 Observations of the kinds the service reads (some with narrative)."""
    res: list[dict[str, Any]] = [{"resourceType": "Patient", "id": PID, "gender": "female",
                                  "birthDate": "1950-03-04",
                                  "text": {"status": "generated",
                                           "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}}]
    plan = [(VITD, "ng/mL", 18.0), (VITD_MOL, "nmol/L", 60.0), (T_SPINE, "{T-score}", -2.4),
            (T_FEMUR_L, "1", -1.9), (T_HIP_L, "1", -1.7), (Z_SPINE, "{Z-score}", -0.8),
            (BMD_SPINE, "g/cm2", 0.85), (GRIP_R, "kg", 17.0), (GRIP_L, "kg", 15.5),
            (GAIT, "m/s", 0.9), (HEIGHT, "cm", 162.0), (WEIGHT, "kg", 61.0), (BMI, "kg/m2", 23.2),
            ("appendicular-lean-mass", "kg", 14.9)]
    for i in range(30):
        code, unit, value = plan[i % len(plan)]
        system = "urn:mskcds" if code.startswith("appendicular") else LOINC
        o = obs(code, value + i * 0.01, unit, system=system, rid=f"o{i}",
                when=f"202{4 + i % 3}-0{1 + i % 9}-1{i % 10}T08:00:00+01:00",
                category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                       "code": "laboratory"}]}],
                performer=[{"reference": "Practitioner/x", "display": "Dr X"}])
        o["code"]["coding"][0]["display"] = "as sent by the lab"
        res.append(o)
    return res


def test_normalize_speed_typical_request(term):
    """Patient + 30 Observations: target < 5 ms (brief); asserted with head-room for a
    loaded shared CI machine, the measured number is printed (pytest -s)."""
    import time
    import cds.fhir.normalize as norm
    res = typical_request()
    facts = run(term, *res)
    assert sum(len(v) for v in facts.measurements.values()) == 30 and facts.excluded == []
    cold, warm = [], []
    for _ in range(15):
        norm._VALIDATED.clear()
        t0 = time.perf_counter()
        run(term, *res)
        cold.append(time.perf_counter() - t0)
    for _ in range(15):
        t0 = time.perf_counter()
        run(term, *res)
        warm.append(time.perf_counter() - t0)
    best_cold, best_warm = min(cold) * 1e3, min(warm) * 1e3
    print(f"\nnormalize Patient+30 Observations: cold {best_cold:.2f} ms, warm {best_warm:.2f} ms")
    assert best_warm < 5.0
    assert best_cold < 25.0   # first sight of every element; machine shared by several suites


# ----------------------------------------------------------------------------- the real rules/
def test_real_value_sets_and_rules_object():
    """Through the Rules object the engine uses (rules.terminology), with the committed
    rules/valuesets.yaml: the issue's ICD-10-CM codes and the medication keywords."""
    from cds.config import Config
    from cds.knowledge.rules import load_rules
    rules = load_rules(Config(rules_dir=REPO / "rules"))
    facts = normalize([
        {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1950-03-04"},
        obs(VITD_MOL, 40, "nmol/L"),
        cond("M81.0", system=ICD10, rid="c1"),
        cond("N18.5", system=ICD10, rid="c2"),
        med({"text": "Cholecalciferol 1000 UNT Oral Tablet"}, rid="m1"),
        med({"text": "Calcitriol 0.25 MCG Oral Capsule"}, rid="m2"),
    ], PID, rules, AS_OF)
    assert facts.latest("vitamin-d-25oh").value == pytest.approx(16.025641)
    assert facts.has_condition("osteoporosis") and facts.has_condition("ckd-stage-4-5")
    assert facts.has_medication("vitamin-d")
    # calcitriol is active vitamin D, never counted as a vitamin D supplement
    assert [m.code for m in facts.medications["vitamin-d"]] == ["text|cholecalciferol"]
    assert facts.has_medication("active-vitamin-d")
    assert facts.excluded == []


def test_unforeseen_error_excludes_that_resource_only(term, monkeypatch, caplog):
    import cds.fhir.normalize as norm

    def broken(*_: Any) -> None:
        raise RuntimeError("Jane Roe 1931")   # would carry data if it were logged
    monkeypatch.setattr(norm, "_condition", broken)
    facts = run(term, cond("64859006"), obs(VITD, 15, "ng/mL"))
    assert facts.excluded == ["Condition: could not be read"]
    assert facts.latest("vitamin-d-25oh").value == 15
    assert "Jane" not in caplog.text


@pytest.mark.parametrize("resource, unusable", [
    (obs(T_SPINE, -3.0, "T-score", ucum=False), {"t-score": 1}),       # unit text, no code
    (obs(VITD, 9, "mg/dL"), {"vitamin-d-25oh": 1}),
    (obs(VITD, 9, "ng/mL", when=None), {"vitamin-d-25oh": 1}),         # no date
    (obs(VITD, 9000, "ng/mL"), {"vitamin-d-25oh": 1}),                 # implausible
    (obs(VITD, 9, "ng/mL", subject="Patient/p2"), {}),                 # not this patient's
    (obs(VITD, 9, "ng/mL", status="entered-in-error"), {}),            # not a result
    (obs(VITD, 9, "ng/mL", status="preliminary"), {}),
    (obs(VITD, 9, "ng/mL", focus=[{"reference": "Patient/fetus"}]), {}),
    (obs(VITD, 9, "ng/mL"), {}),
])
def test_unusable_own_results_are_counted_per_kind(term, resource, unusable):
    assert run(term, resource).unusable == unusable


def test_unusable_counts_failed_components_and_invalid_resources(term):
    panel = obs("dxa-panel", None, None, system="http://acme.example/panels", rid="a", component=[
        {"code": {"coding": [{"system": LOINC, "code": T_SPINE}]},
         "valueQuantity": {"value": -2.7, "system": UCUM, "code": "1"}},
        {"code": {"coding": [{"system": LOINC, "code": Z_SPINE}]},
         "valueQuantity": {"value": -1.0, "system": UCUM, "code": "mg"}}])
    invalid = obs(BMD_SPINE, 0.8, "g/cm2", rid="b")
    invalid["code"]["coding"][0]["version"] = {"not": "a string"}
    facts = run(term, panel, invalid)
    assert facts.unusable == {"z-score": 1, "bmd": 1}
    assert only(facts, "t-score").value == -2.7


def test_cql_services_requests_with_mismatched_ids_give_no_facts(term, shared_dir):
    """Real Synthea-derived requests (CQL Services test suite): context.patientId '2-1' while
    the Patient is '43d3f8ac-...' and every reference is urn:uuid: — nothing can be proven to be
    the patient in context, so nothing becomes a fact (and nothing raises)."""
    path = shared_dir / "cql-services" / "examples" / "hooks" / "R4" / "Adrian111_Wunsch504.json"
    request = json.loads(path.read_text())
    resources: list[dict[str, Any]] = []
    for value in request["prefetch"].values():
        if value.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in value.get("entry", [])]
        else:
            resources.append(value)
    facts = normalize(resources, request["context"]["patientId"], term, AS_OF)
    assert (facts.gender, facts.birth_date, facts.measurements) == (None, None, {})
    assert facts.conditions == {} and facts.medications == {}
    assert facts.excluded == ["Patient: not the patient in context"]


def test_a_unit_as_sent_that_holds_the_patient_id_is_not_repeated_in_the_reason(term):
    """The reason for an unaccepted unit quotes the unit as sent, unless it holds the patient's
    id (a sender that put it there): then '?' stands in its place."""
    res = obs(VITD, 30, "mmol-x")
    res["valueQuantity"]["code"] = res["valueQuantity"]["unit"] = PID
    assert run(term, res).excluded == ["Observation: unit '?' not accepted for vitamin-d-25oh"]
    assert run(term, obs(VITD, 30, "mmol-x")).excluded == [
        "Observation: unit 'mmol-x' not accepted for vitamin-d-25oh"]


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "0001-01-01T00:30+01:00",
                                   "9999-12-31T23:59:59-01:00"])
def test_a_datetime_whose_utc_time_falls_outside_the_calendar_is_no_date(term, value):
    """Year 0 or 10000 once in UTC: no date, so the result is left out saying why (it was an
    OverflowError, read as "could not be read")."""
    from cds.fhir.normalize import parse_datetime

    assert parse_datetime(value) is None
    res = obs(VITD, 30, "ng/mL")
    res["effectiveDateTime"] = value
    assert run(term, res).excluded == [
        "Observation: effectiveDateTime is not a valid FHIR dateTime"]
