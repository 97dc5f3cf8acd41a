"""cds/knowledge/terminology.py: loading, cross-file checks, lookups, unit conversion, prefetch templates."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from cds.knowledge.loader import RulesError
from cds.knowledge.terminology import load_terminology

from rules_support import CATEGORIES, FILES, REPO, RULES, _dump, _load, rules_copy  # noqa: F401


def edit(path: Path, change: Callable[[Any], None]) -> None:
    data = _load(path.read_text())
    change(data)
    path.write_text(_dump(data))


@pytest.fixture(scope="module")
def term():
    return load_terminology(RULES)


# ----------------------------------------------------------------------------- the real files
def test_real_rules_load_and_every_kind_has_units_and_bounds(term):
    raw = yaml.safe_load((RULES / "valuesets.yaml").read_text())
    assert set(term.kinds) == set(raw["observations"])
    for kind in term.kinds:
        assert term.units[kind].canonical in term.units[kind].accepted
        assert kind in term.bounds
    n_codes = sum(len(v["codes"]) for v in raw["observations"].values())
    assert len(term.observation_codes) == n_codes


def test_observation_lookup_gives_kind_site_laterality(term):
    hit = term.observation("http://loinc.org", "80948-3")
    assert (hit.kind, hit.site, hit.laterality) == ("t-score", "femur", "left")
    assert term.observation("http://loinc.org", "38267-1").site == "lumbar-spine"
    assert term.observation("http://loinc.org", "62292-8").property == "mass-concentration"
    assert term.observation("http://loinc.org", "14635-7").property == "substance-concentration"
    assert term.observation("http://snomed.info/sct", "80948-3") is None   # system matters
    # 25(OH)D fractions: D2 (49054-0) and D3 (1989-3, 14635-7) are parts of the total, never the total
    assert term.observation("http://loinc.org", "49054-0").fraction == "d2"
    assert term.observation("http://loinc.org", "1989-3").fraction == "d3"
    assert term.observation("http://loinc.org", "14635-7").fraction == "d3"
    assert term.observation("http://loinc.org", "62292-8").fraction is None


# canonical units the rules owner relies on (rules brief: "normalize delivers these")
@pytest.mark.parametrize("kind, unit", [
    ("vitamin-d-25oh", "ng/mL"), ("t-score", "{T-score}"), ("z-score", "{Z-score}"),
    ("bmd", "g/cm2"), ("appendicular-lean-mass", "kg"), ("appendicular-lean-mass-index", "kg/m2"),
    ("grip-strength", "kg"), ("gait-speed", "m/s"), ("body-height", "m"), ("body-weight", "kg"),
    ("bmi", "kg/m2")])
def test_canonical_units(term, kind, unit):
    assert term.canonical_unit(kind) == unit


# Conversions both ways, numbers worked out by hand from the cited definitions:
# 1 ng/mL = 2.496 nmol/L; [in_i] = 2.54 cm; [lb_av] = 0.45359237 kg; [lbf_av] = 0.45359237 kgf;
# 1 kgf = 9.80665 N.
@pytest.mark.parametrize("kind, value, unit, other, expected", [
    ("vitamin-d-25oh", 20, "ng/mL", "nmol/L", 49.92),
    ("vitamin-d-25oh", 49.92, "nmol/L", "ng/mL", 20.0),
    ("vitamin-d-25oh", 12, "ng/mL", "nmol/L", 29.952),
    ("vitamin-d-25oh", 74.88, "nmol/L", "ng/mL", 30.0),
    ("vitamin-d-25oh", 30, "ug/L", "ng/mL", 30.0),
    ("vitamin-d-25oh", 30, "ng/mL", "ug/L", 30.0),
    ("grip-strength", 10, "kg", "[lbf_av]", 22.046226218),
    ("grip-strength", 50, "[lbf_av]", "kg", 22.6796185),
    ("grip-strength", 98.0665, "N", "kg", 10.0),
    ("grip-strength", 16, "kg", "N", 156.9064),
    ("body-height", 70, "[in_i]", "m", 1.778),
    ("body-height", 1.778, "m", "[in_i]", 70.0),
    ("body-height", 165, "cm", "m", 1.65),
    ("body-weight", 100, "[lb_av]", "kg", 45.359237),
    ("body-weight", 45.359237, "kg", "[lb_av]", 100.0),
    ("body-weight", 70500, "g", "kg", 70.5),
    ("appendicular-lean-mass", 15000, "g", "kg", 15.0),
    ("appendicular-lean-mass", 20, "kg", "[lb_av]", 44.092452437),
    ("gait-speed", 80, "cm/s", "m/s", 0.8),
    ("bmd", 0.887, "g/cm-2", "g/cm2", 0.887),
])
def test_unit_conversion_both_directions(term, kind, value, unit, other, expected):
    assert term.convert(kind, value, unit, other) == pytest.approx(expected, rel=1e-9)


def test_convert_refuses_units_not_accepted(term):
    with pytest.raises(KeyError):
        term.convert("vitamin-d-25oh", 10, "mg/dL", "ng/mL")


# ----------------------------------------------------------------------------- prefetch
def test_prefetch_templates_shape(term):
    p = term.prefetch_templates()
    assert set(p) == {"patient", "observations", "conditions", "medications", "medicationStatements",
                      "diagnosticReports"}
    assert p["diagnosticReports"] == ("DiagnosticReport?patient={{context.patientId}}"
                                      "&code=http://loinc.org|38269-7,http://loinc.org|83311-1")
    assert p["patient"] == "Patient/{{context.patientId}}"
    assert p["conditions"].startswith("Condition?patient={{context.patientId}}")
    assert p["medications"].startswith("MedicationRequest?patient={{context.patientId}}")
    assert p["medicationStatements"] == "MedicationStatement?patient={{context.patientId}}"
    # only the spec's context token is used
    for url in p.values():
        assert set(re.findall(r"\{\{([^}]*)\}\}", url)) == {"context.patientId"}
        assert " " not in url


def test_observation_prefetch_lists_every_code_once(term):
    url = term.prefetch_templates()["observations"]
    assert url.startswith("Observation?patient={{context.patientId}}&")
    params = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert params["_sort"] == "-date"
    assert 100 <= int(params["_count"]) <= 200
    codes = params["code"].split(",")
    assert sorted(codes) == sorted(term.observation_codes)
    assert all("|" in c for c in codes)           # system|code token search
    assert len(url) < 4000                          # far below common ~8 KB URL caps


def test_prefetch_follows_the_value_sets(tmp_path):
    rules = rules_copy(tmp_path)
    # a code taken out of a kind is no longer asked for; the kind's other codes still are
    edit(rules / "valuesets.yaml", lambda d: d["observations"]["t-score"].update(codes=[
        c for c in d["observations"]["t-score"]["codes"] if c["code"] != "38267-1"]))
    url = load_terminology(rules).prefetch_templates()["observations"]
    assert "38267-1" not in url and "38263-0" in url and "39156-5" in url and "8302-2" in url


def test_a_kind_the_code_reads_cannot_be_taken_out(tmp_path):
    # the code reads BMI (ALM/BMI): removing the kind from every file stops start-up naming it
    rules = rules_copy(tmp_path)
    edit(rules / "valuesets.yaml", lambda d: d["observations"].pop("bmi"))
    edit(rules / "units.yaml", lambda d: d["kinds"].pop("bmi"))
    edit(rules / "data_quality.yaml", lambda d: d["plausible"].pop("bmi"))
    with pytest.raises(RulesError) as info:
        load_terminology(rules)
    assert "valuesets.yaml" in str(info.value) and "no kind 'bmi'" in str(info.value)


# ----------------------------------------------------------------------------- categories
def test_condition_medication_orderable_lookups(tmp_path):
    term = load_terminology(rules_copy(tmp_path))
    [cat] = term.condition_categories("http://snomed.info/sct", "64859006")
    assert cat.category == "osteoporosis"
    assert [c.category for c in term.condition_categories(
        "http://hl7.org/fhir/sid/icd-10-cm", "N18.5")] == ["ckd-stage-4-5"]
    assert term.condition_categories("http://hl7.org/fhir/sid/icd-10-cm", "N18.3") == ()
    assert term.medication_categories("http://www.nlm.nih.gov/research/umls/rxnorm",
                                      "904420")[0].category == "osteoporosis-therapy"
    assert ("cholecalciferol", "vitamin-d") in term.medication_keywords
    assert term.orderable("dxa-scan") == {"system": "http://snomed.info/sct",
                                          "code": "312681000",
                                          "display": "Bone density scan (procedure)"}
    with pytest.raises(KeyError, match="no-such"):
        term.orderable("no-such")


def test_a_condition_code_may_belong_to_two_categories(tmp_path):
    rules = rules_copy(tmp_path)
    edit(rules / "valuesets.yaml", lambda d: d["conditions"]["dialysis"]["codes"].append(
        {"system": "icd10cm", "code": "N18.5", "display": "CKD 5", "source": "test"}))
    term = load_terminology(rules)
    cats = {c.category for c in term.condition_categories(
        "http://hl7.org/fhir/sid/icd-10-cm", "N18.5")}
    assert cats == {"ckd-stage-4-5", "dialysis"}


def test_loaded_once_no_file_access_afterwards(tmp_path):
    rules = rules_copy(tmp_path)
    term = load_terminology(rules)
    shutil.rmtree(rules)
    assert term.observation("http://loinc.org", "62292-8").kind == "vitamin-d-25oh"
    assert "Observation?" in term.prefetch_templates()["observations"]


# ----------------------------------------------------------------------------- broken files
def _set(path: list[Any], value: Any) -> Callable[[Any], None]:
    def change(d: Any) -> None:
        for p in path[:-1]:
            d = d[p]
        d[path[-1]] = value
    return change


def _del(path: list[Any]) -> Callable[[Any], None]:
    def change(d: Any) -> None:
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]
    return change


def _dup_kind(d: Any) -> None:
    d["observations"]["z-score"]["codes"].append(dict(d["observations"]["t-score"]["codes"][0]))


BROKEN = [
    ("valuesets.yaml", _set(["observations", "t-score", "codes", 0, "system"], "lonic"),
     ["observations.t-score.codes[0].system", "lonic"]),
    ("valuesets.yaml", _set(["observations", "t-score", "codes", 0, "site"], "hip"),
     ["site"]),
    ("valuesets.yaml", _set(["observations", "grip-strength", "codes", 0, "laterality"], "both"),
     ["laterality"]),
    ("valuesets.yaml", _del(["observations", "bmd", "codes", 0, "source"]), ["source"]),
    ("valuesets.yaml", _dup_kind, ["observations.z-score.codes[", "already mapped to kind 't-score'"]),
    ("valuesets.yaml", _set(["conditions", "dialysis", "codes", 0, "system"], "icd10"),
     ["conditions.dialysis.codes[0].system"]),
    ("valuesets.yaml", _set(["medications", "vitamin-d", "text_keywords"], ["Cholecalciferol"]),
     ["text_keywords"]),
    ("valuesets.yaml", _set(["orderables", "dxa-scan", "system"], "sct"), ["orderables.dxa-scan.system"]),
    ("units.yaml", _del(["kinds", "bmd"]), ["kinds.bmd", "no unit entry"]),
    ("units.yaml", _set(["kinds", "bmd", "accept", 1, "divide"], 2), ["multiply"]),
    ("units.yaml", _set(["kinds", "bmd", "canonical"], "mg/cm2"), ["canonical"]),
    ("units.yaml", _set(["kinds", "bmd", "accept", 0, "cite"], "nowhere"),
     ["kinds.bmd.accept[0].cite", "nowhere"]),
    ("units.yaml", _set(["kinds", "hemoglobin"], {"canonical": "g/dL", "accept": [
        {"code": "g/dL", "multiply": 1, "cite": "ucum"}]}), ["kinds.hemoglobin", "unknown kind"]),
    ("units.yaml", _set(["kinds", "bmd", "accept", 1, "multiply"], -1), ["multiply"]),
    ("data_quality.yaml", _del(["plausible", "gait-speed"]), ["plausible.gait-speed"]),
    ("data_quality.yaml", _set(["plausible", "bmi", "low"], 200), ["plausible", "bmi", "low"]),
    ("data_quality.yaml", _del(["plausible", "bmi", "why"]), ["why"]),
    ("data_quality.yaml", _set(["observations", "accepted_status"], ["final", "done"]),
     ["accepted_status"]),
]


@pytest.mark.parametrize("filename, change, expected", BROKEN,
                         ids=[f"{b[0]}:{'/'.join(b[2])[:40]}" for b in BROKEN])
def test_broken_file_raises_rules_error_naming_file_and_field(tmp_path, filename, change, expected):
    rules = rules_copy(tmp_path)     # the unchanged copy loads: test_condition_medication_...
    edit(rules / filename, change)
    with pytest.raises(RulesError) as info:
        load_terminology(rules)
    message = str(info.value)
    assert filename in message
    for part in expected:
        assert part in message, message


def test_yaml_syntax_error_and_missing_file(tmp_path):
    rules = rules_copy(tmp_path)
    (rules / "units.yaml").write_text("kinds: [unclosed\n")
    with pytest.raises(RulesError, match="units.yaml: not valid YAML"):
        load_terminology(rules)
    (rules / "units.yaml").unlink()
    with pytest.raises(RulesError, match="units.yaml: cannot read"):
        load_terminology(rules)
