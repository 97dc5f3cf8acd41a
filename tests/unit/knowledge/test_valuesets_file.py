"""Structure of rules/valuesets.yaml (the terminology file), read as plain YAML.

This checks the file itself: every code carries system/code/display/source, no code is claimed
twice, the issue's LOINC codes are all accounted for, site/laterality/property values come from
the allowed sets. The loader in cds/knowledge/terminology.py does its own validation; this test does not
replace it.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

VALUESETS = Path(__file__).resolve().parents[3] / "rules" / "valuesets.yaml"

SYSTEM_URIS = {
    "loinc": "http://loinc.org",
    "snomed": "http://snomed.info/sct",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "mskcds": "urn:mskcds",
}
SITES = {"lumbar-spine", "total-hip", "femur", "femoral-neck", "radius", "calcaneus"}
LATERALITIES = {"left", "right"}
PROPERTIES = {"mass-concentration", "substance-concentration"}
CODE_KEYS = {"system", "code", "display", "source", "site", "laterality", "property", "fraction", "tty", "note"}
TTYS = {"IN", "PIN", "MIN", "SCD", "SBD", "SCDC", "SBDC", "SCDF", "SBDF", "GPCK", "BPCK"}

# Per-system shape of a code: a typo (a dropped dash, a LOINC check digit glued on) fails here.
CODE_SHAPES = {
    "loinc": re.compile(r"^\d{1,7}-\d$"),
    "snomed": re.compile(r"^\d{6,18}$"),
    "icd10cm": re.compile(r"^[A-Z]\d[0-9A-Z](\.[0-9A-Z]{1,4})?$"),
    "rxnorm": re.compile(r"^\d{1,8}$"),
    "mskcds": re.compile(r"^[a-z][a-z0-9-]*$"),
}

# The LOINC codes named in issue 3, with the kind each must land in (or be listed as unverified).
ISSUE_LOINC = {
    "vitamin-d-25oh": ["62292-8", "1989-3", "14635-7", "49054-0"],
    "t-score": ["38267-1", "38263-0", "80948-3", "80947-5", "38264-8", "80946-7", "80945-9",
                "38265-5", "80944-2", "80943-4"],
    "z-score": ["85394-5", "80934-3", "80940-0", "80939-2", "80933-5", "80938-4", "80937-6",
                "80932-7", "80936-8", "80935-0"],
    "bmd": ["24966-4", "24701-5", "80954-1", "80953-3", "38261-4", "46278-8", "46279-6",
            "24890-6", "80952-5", "80951-7"],
    "t-score-peripheral": ["38266-3"],
    "grip-strength": ["83174-3", "83173-5"],
    "gait-speed": ["83172-7"],
    "body-height": ["8302-2"],
    "body-weight": ["29463-7"],
    "bmi": ["39156-5"],
}
REQUIRED_CONDITIONS = {"osteoporosis", "low-bone-mass", "fragility-fracture", "ckd-stage-4-5",
                       "dialysis", "sarcopenia", "vitamin-d-deficiency"}
REQUIRED_MEDICATIONS = {"vitamin-d", "active-vitamin-d", "osteoporosis-therapy"}
REQUIRED_ORDERABLES = {"dxa-scan", "vitamin-d-test", "problem-osteoporosis",
                       "problem-low-bone-mass", "problem-sarcopenia",
                       "problem-vitamin-d-deficiency"}


@pytest.fixture(scope="module")
def doc() -> dict:
    data = yaml.safe_load(VALUESETS.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "valuesets.yaml must be a mapping at the top level"
    return data


def _sections(doc: dict, name: str) -> dict:
    section = doc[name]
    assert isinstance(section, dict) and section, f"{name} must be a non-empty mapping"
    return section


def _all_codes(doc: dict) -> list[tuple[str, str, dict]]:
    """(where, category, entry) for every code entry in observations/conditions/medications/reports."""
    out = []
    for where in ("observations", "conditions", "medications", "reports"):
        for category, body in _sections(doc, where).items():
            assert isinstance(body, dict), f"{where}.{category} must be a mapping"
            assert isinstance(body.get("title"), str) and body["title"].strip(), \
                f"{where}.{category}.title missing"
            codes = body.get("codes")
            assert isinstance(codes, list), f"{where}.{category}.codes must be a list"
            out.extend((where, category, entry) for entry in codes)
    for name, entry in _sections(doc, "orderables").items():
        out.append(("orderables", name, entry))
    return out


def test_top_level_layout(doc):
    assert doc["version"] == 1
    assert set(doc) == {"version", "code_systems", "observations", "conditions", "medications",
                        "reports", "orderables", "unverified"}
    assert doc["code_systems"] == SYSTEM_URIS


def test_every_code_entry_is_complete_and_well_formed(doc):
    entries = _all_codes(doc)
    assert len(entries) > 100  # observations + conditions alone hold well over 100 codes
    for where, category, entry in entries:
        label = f"{where}.{category} {entry.get('code')!r}"
        assert isinstance(entry, dict), label
        assert set(entry) <= CODE_KEYS, f"{label}: unknown keys {set(entry) - CODE_KEYS}"
        for key in ("system", "code", "display", "source"):
            assert isinstance(entry.get(key), str) and entry[key].strip(), f"{label}: {key} missing"
        assert entry["system"] in SYSTEM_URIS, f"{label}: unknown system {entry['system']}"
        assert CODE_SHAPES[entry["system"]].match(entry["code"]), \
            f"{label}: {entry['code']!r} is not shaped like a {entry['system']} code"
        assert len(entry["source"]) >= 20, f"{label}: source too short to name where it was confirmed"
        if "site" in entry:
            assert entry["site"] in SITES, label
        if "laterality" in entry:
            assert entry["laterality"] in LATERALITIES, label
        if "property" in entry:
            assert entry["property"] in PROPERTIES, label
        if "tty" in entry:
            assert entry["system"] == "rxnorm" and entry["tty"] in TTYS, label
        if entry["system"] == "mskcds":
            assert "mskcds project CodeSystem" in entry["source"], label


# A Condition code may mean several facts at once, but only these overlaps are intended: a coded
# osteoporotic fracture is osteoporosis AND a fragility fracture (at a site), and CKD stage 5 on
# dialysis is both CKD G4-G5 and dialysis (issue 9). Any other repeat is a mistake.
CONDITION_OVERLAPS = {
    frozenset({"osteoporosis", "fragility-fracture"}),
    frozenset({"ckd-stage-4-5", "dialysis"}),
} | {frozenset({"fragility-fracture", f"fracture-{s}"}) for s in ("hip", "vertebra", "forearm", "humerus", "pelvis")} \
  | {frozenset({"osteoporosis", "fragility-fracture", f"fracture-{s}"}) for s in ("hip", "vertebra", "forearm", "humerus", "pelvis")}


def test_no_code_claimed_twice_within_a_section(doc):
    # An Observation or medication code maps to exactly one kind/category: normalize must never
    # have to guess between two. Condition codes: only the intended overlaps above.
    for where in ("observations", "medications"):
        seen = Counter((e["system"], e["code"])
                       for w, _c, e in _all_codes(doc) if w == where)
        dupes = [k for k, n in seen.items() if n > 1]
        assert not dupes, f"{where}: codes listed more than once: {dupes}"
    categories: dict[tuple[str, str], list[str]] = {}
    for w, category, e in _all_codes(doc):
        if w == "conditions":
            categories.setdefault((e["system"], e["code"]), []).append(category)
    for key, cats in categories.items():
        assert len(cats) == len(set(cats)), f"conditions: {key} listed twice in {cats}"
        if len(cats) > 1:
            assert frozenset(cats) in CONDITION_OVERLAPS, f"conditions: {key} in {sorted(cats)}"


def test_every_fracture_site_code_is_a_fragility_fracture(doc):
    conditions = _sections(doc, "conditions")
    fragility = {(e["system"], e["code"]) for e in conditions["fragility-fracture"]["codes"]}
    for site in ("hip", "vertebra", "forearm", "humerus", "pelvis"):
        codes = {(e["system"], e["code"]) for e in conditions[f"fracture-{site}"]["codes"]}
        assert codes and codes <= fragility, f"fracture-{site}: {sorted(codes - fragility)}"


def test_osteoporosis_holds_the_whole_vsac_1038_and_1050_sets(doc):
    # VSAC 1038 "Osteoporosis Without Current Fracture" has 83 codes (expansion 20240502); 1050
    # "Osteoporosis With Current Fracture": 324 ICD-10-CM M80.0-/M80.8- codes + 16 SNOMED CT codes.
    osteo = _sections(doc, "conditions")["osteoporosis"]["codes"]
    by_source = Counter("1038" if "113.12.1038" in e["source"] else "1050" if "113.12.1050" in e["source"]
                        else "other" for e in osteo)
    assert by_source["1038"] == 83 and by_source["other"] == 0
    m80 = [e for e in osteo if e["code"].startswith("M80.")]
    assert len(m80) == 324 and {e["code"][:5] for e in m80} == {"M80.0", "M80.8"}
    assert {"32369003", "M80.08XA", "M80.0B1A", "M81.6"} <= {e["code"] for e in osteo}


def test_issue_loinc_codes_are_present_or_listed_unverified(doc):
    observations = _sections(doc, "observations")
    unverified = {(u["system"], u["code"]) for u in doc["unverified"]}
    missing = []
    for kind, codes in ISSUE_LOINC.items():
        present = {e["code"] for e in observations.get(kind, {}).get("codes", [])
                   if e["system"] == "loinc"}
        for code in codes:
            if code not in present and ("loinc", code) not in unverified:
                missing.append((kind, code))
    assert not missing, f"issue LOINC codes neither mapped nor listed as unverified: {missing}"


def test_unverified_codes_are_not_used(doc):
    used = {(e["system"], e["code"]) for _w, _c, e in _all_codes(doc)}
    for item in doc["unverified"]:
        assert {"system", "code", "why"} <= set(item) <= {"system", "code", "why", "display"}, item
        assert item["system"] in SYSTEM_URIS and isinstance(item["code"], str), item
        assert isinstance(item["why"], str) and len(item["why"]) >= 20, item
        assert (item["system"], item["code"]) not in used, f"{item['code']} is unverified yet used"


def test_dxa_sites_and_laterality_are_set(doc):
    observations = _sections(doc, "observations")
    for kind in ("t-score", "z-score", "bmd", "t-score-peripheral"):
        for entry in observations[kind]["codes"]:
            assert "site" in entry, f"{kind} {entry['code']} has no site"
            # LOINC names one-sided DXA codes "... - left/right ..."; laterality must agree.
            for side in ("left", "right"):
                if f"- {side}" in entry["display"]:
                    assert entry.get("laterality") == side, entry["code"]
            if "- left" not in entry["display"] and "- right" not in entry["display"]:
                assert "laterality" not in entry, entry["code"]
    for entry in observations["t-score-peripheral"]["codes"]:
        assert entry["site"] == "calcaneus"
    assert all(e["site"] != "calcaneus" for e in observations["t-score"]["codes"]), \
        "a peripheral (calcaneus) T-score must never sit with the diagnostic central T-scores"


def test_vitamin_d_codes_declare_their_property(doc):
    for entry in _sections(doc, "observations")["vitamin-d-25oh"]["codes"]:
        assert entry.get("property") in PROPERTIES, entry["code"]
        expected = ("substance-concentration" if "[Moles/volume]" in entry["display"]
                    else "mass-concentration")
        assert entry["property"] == expected, entry["code"]


def test_required_categories_exist(doc):
    assert REQUIRED_CONDITIONS <= set(_sections(doc, "conditions"))
    assert REQUIRED_MEDICATIONS <= set(_sections(doc, "medications"))
    assert REQUIRED_ORDERABLES <= set(_sections(doc, "orderables"))
    for name in ("appendicular-lean-mass", "appendicular-lean-mass-index"):
        codes = _sections(doc, "observations")[name]["codes"]
        assert [(c["system"], c["code"]) for c in codes] == [("mskcds", name)]


def test_medication_keywords_are_lower_case_and_disjoint(doc):
    medications = _sections(doc, "medications")
    owner: dict[str, str] = {}
    for category, body in medications.items():
        keywords = body.get("text_keywords", [])
        assert isinstance(keywords, list), category
        assert body["codes"] or keywords, f"{category} matches nothing"
        for kw in keywords:
            assert isinstance(kw, str) and kw == kw.lower() and kw.strip() == kw and kw, (category, kw)
            assert kw not in owner, f"keyword {kw!r} in both {owner.get(kw)} and {category}"
            owner[kw] = category
    # Active vitamin D must not be read as a plain supplement: no vitamin-d keyword may occur
    # inside an active-vitamin-d keyword (e.g. "ergocalciferol" inside "doxercalciferol").
    for kw in medications["vitamin-d"]["text_keywords"]:
        for active in medications["active-vitamin-d"]["text_keywords"]:
            assert kw not in active, (kw, active)
