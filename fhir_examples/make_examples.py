"""Generate the example patients in fhir_examples/ (run from the repository root):

    .venv/bin/python fhir_examples/make_examples.py            # anchor date 2026-11-22
    .venv/bin/python fhir_examples/make_examples.py --as-of 2027-06-01 --out /tmp/x

For each finding, and for a healthy patient, two files with the same data:
``<name>.request.json`` (a CDS Hooks patient-view request, prefetch keyed exactly as the
service's discovery document) and ``<name>.bundle.json`` (a FHIR R4 collection Bundle).
Every resource is validated with fhir.resources.R4B. Dates are relative to the anchor
date (``--as-of``) so the vitamin D results stay inside the 365-day window; ids and
hookInstance values are derived deterministically, so re-running gives the same files.

Observation codes are never written here: each is looked up in rules/valuesets.yaml by
its kind (and DXA site / laterality), through cds.terminology.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cds.knowledge.terminology import load_terminology  # noqa: E402

ANCHOR = date(2026, 11, 22)
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
NAMESPACE = uuid.UUID("6f1d6a52-3c1e-4d0b-9f1e-6d736b636473")   # fixed: deterministic ids
PREFETCH_TYPES = {"observations": "Observation", "conditions": "Condition",
                  "medications": "MedicationRequest"}
UCUM_TABLET = "{tbl}"


@dataclass
class Obs:
    kind: str
    value: float
    unit: str                      # UCUM code as sent
    days_ago: int
    site: str | None = None
    laterality: str | None = None
    comparator: str | None = None


@dataclass
class Med:
    """A MedicationRequest on record: a product code of rules/valuesets.yaml medications,
    ``per_day`` product units (tablets) once daily, authored ``days_ago``."""
    system: str                    # code-system key ("rxnorm")
    code: str
    per_day: float
    days_ago: int


@dataclass
class Example:
    name: str                      # file stem; for findings, the finding name
    finding: str | None            # the card this example must produce (None: no card)
    title: str
    gender: str
    birth_date: date
    observations: list[Obs] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)     # condition categories (valuesets.yaml)
    # specific condition codes: ("snomed"/"icd10cm" code-system key, code, onset days ago or None)
    coded: list[tuple[str, str, int | None]] = field(default_factory=list)
    profile: str | None = None     # vitamin D profile the example needs (None: the default)
    medications: list[Med] = field(default_factory=list)


# Unit display strings (Quantity.unit), by UCUM code.
UNIT_TEXT = {"ng/mL": "ng/mL", "nmol/L": "nmol/L", "{T-score}": "T-score", "{Z-score}": "Z-score",
             "g/cm2": "g/cm2", "kg": "kg", "kg/m2": "kg/m2", "m/s": "m/s", "cm": "cm", "m": "m",
             "mL/min/{1.73_m2}": "mL/min/1.73m2", "mg/dL": "mg/dL"}
CATEGORY = {"vitamin-d-25oh": "laboratory", "t-score": "imaging", "z-score": "imaging",
            "bmd": "imaging", "appendicular-lean-mass": "imaging",
            "appendicular-lean-mass-index": "imaging", "grip-strength": "exam",
            "gait-speed": "exam", "body-height": "vital-signs", "body-weight": "vital-signs",
            "bmi": "vital-signs", "egfr": "laboratory", "serum-calcium": "laboratory",
            "frax-major-osteoporotic": "survey", "ost-score": "survey"}


def born(years_before: int, anchor: date, month: int = 3, day: int = 14) -> date:
    return date(anchor.year - years_before, month, day)


def examples(anchor: date) -> list[Example]:
    normal_dxa = [Obs("t-score", -0.6, "{T-score}", 200, site="lumbar-spine"),
                  Obs("t-score", -0.9, "{T-score}", 200, site="total-hip")]
    return [
        Example("vitamin-d-deficiency", "vitamin-d-deficiency",
                "Woman, 58: 25(OH)D 9 ng/mL (deficient, severe: below 12)", "female",
                born(58, anchor), [Obs("vitamin-d-25oh", 9, "ng/mL", 51)]),
        Example("vitamin-d-deficiency-kidney-failure", "vitamin-d-deficiency",
                "Man, 70, on dialysis: 25(OH)D 14 ng/mL (KDIGO: dosing with the dialysis team, no draft)",
                "male", born(70, anchor), [Obs("vitamin-d-25oh", 14, "ng/mL", 25),
                                           Obs("t-score", -0.8, "{T-score}", 300, site="total-hip")],
                conditions=["dialysis"]),
        Example("vitamin-d-insufficiency", "vitamin-d-insufficiency",
                "Man, 45: 25(OH)D 62 nmol/L (24.8 ng/mL, insufficient by the Endocrine Society 2011 profile)",
                "male", born(45, anchor), [Obs("vitamin-d-25oh", 62, "nmol/L", 30)],
                profile="endocrine-society-2011"),
        Example("vitamin-d-below-bone-target", "vitamin-d-below-bone-target",
                "Woman, 70, osteoporosis on the problem list: 25(OH)D 24 ng/mL (bone-health target 30)",
                "female", born(70, anchor), [Obs("vitamin-d-25oh", 24, "ng/mL", 30)],
                coded=[("snomed", "64859006", None)]),
        Example("fracture-treatment-gap", "fracture-treatment-gap",
                "Woman, 75: hip fragility fracture 14 months ago, no DXA and no treatment since; eGFR 58",
                "female", born(75, anchor), [Obs("egfr", 58, "mL/min/{1.73_m2}", 40)],
                coded=[("snomed", "431031001", 425)]),
        Example("vitamin-d-excess", "vitamin-d-excess",
                "Woman, 61: 25(OH)D 124 ng/mL (above 100)", "female",
                born(61, anchor), [Obs("vitamin-d-25oh", 124, "ng/mL", 20)]),
        Example("osteoporosis", "osteoporosis",
                "Woman, 72: total hip T-score -2.7 on the latest DXA", "female",
                born(72, anchor), [Obs("t-score", -2.1, "{T-score}", 90, site="lumbar-spine"),
                                   Obs("t-score", -2.7, "{T-score}", 90, site="total-hip"),
                                   Obs("bmd", 0.662, "g/cm2", 90, site="total-hip"),
                                   Obs("vitamin-d-25oh", 34, "ng/mL", 90)]),
        Example("low-bone-mass", "low-bone-mass",
                "Man, 66: lumbar spine T-score -1.8", "male",
                born(66, anchor), [Obs("t-score", -1.8, "{T-score}", 120, site="lumbar-spine"),
                                   Obs("t-score", -1.1, "{T-score}", 120, site="total-hip")]),
        Example("bmd-below-expected-for-age", "bmd-below-expected-for-age",
                "Woman, 42: lumbar spine Z-score -2.3 (T-scores not used under 50)", "female",
                born(42, anchor), [Obs("z-score", -2.3, "{Z-score}", 60, site="lumbar-spine"),
                                   Obs("t-score", -2.6, "{T-score}", 60, site="lumbar-spine")]),
        Example("bmd-significant-loss", "bmd-significant-loss",
                "Woman, 63: lumbar spine BMD 0.950 -> 0.890 g/cm2 in two years (-6.3 %, LSC 5.3 %)", "female",
                born(63, anchor), [Obs("bmd", 0.950, "g/cm2", 760, site="lumbar-spine"),
                                   Obs("bmd", 0.890, "g/cm2", 30, site="lumbar-spine"),
                                   Obs("t-score", -0.9, "{T-score}", 30, site="lumbar-spine"),
                                   Obs("t-score", -0.6, "{T-score}", 30, site="total-hip")]),
        Example("dxa-screening-due", "dxa-screening-due",
                "Woman, 67: no DXA, no osteoporosis diagnosis or therapy on record", "female",
                born(67, anchor), [Obs("vitamin-d-25oh", 36, "ng/mL", 100)]),
        Example("low-muscle-mass", "low-muscle-mass",
                "Woman, 75: ASM index 5.1 kg/m2 by DXA, grip strength never measured", "female",
                born(75, anchor), normal_dxa + [
                    Obs("appendicular-lean-mass-index", 5.1, "kg/m2", 200)]),
        Example("sarcopenia-probable", "sarcopenia-probable",
                "Man, 78: grip 24 and 22 kg (best 24 < 27), muscle mass not measured", "male",
                born(78, anchor), normal_dxa + [
                    Obs("grip-strength", 24, "kg", 10, laterality="right"),
                    Obs("grip-strength", 22, "kg", 10, laterality="left")]),
        Example("sarcopenia-confirmed", "sarcopenia-confirmed",
                "Woman, 80: grip 15 kg, ASM 13.8 kg (< 15), gait 1.0 m/s", "female",
                born(80, anchor), normal_dxa + [
                    Obs("grip-strength", 15, "kg", 10, laterality="right"),
                    Obs("grip-strength", 13, "kg", 10, laterality="left"),
                    Obs("appendicular-lean-mass", 13.8, "kg", 200),
                    Obs("body-height", 158, "cm", 200),
                    Obs("gait-speed", 1.0, "m/s", 10)]),
        Example("sarcopenia-severe", "sarcopenia-severe",
                "Man, 82: grip 24 kg, ASM 17.5 kg with height 1.70 m (index 6.06), gait 0.6 m/s",
                "male", born(82, anchor), normal_dxa + [
                    Obs("grip-strength", 24, "kg", 15, laterality="right"),
                    Obs("grip-strength", 22, "kg", 15, laterality="left"),
                    Obs("appendicular-lean-mass", 17.5, "kg", 200),
                    Obs("body-height", 170, "cm", 200),
                    Obs("gait-speed", 0.6, "m/s", 15)]),
        Example("osteosarcopenia", "osteosarcopenia",
                "Woman, 79: femur T-score -2.8 with grip 14 kg and ASM index 5.0 kg/m2", "female",
                born(79, anchor), [
                    Obs("t-score", -2.8, "{T-score}", 150, site="femur"),
                    Obs("t-score", -2.2, "{T-score}", 150, site="lumbar-spine"),
                    Obs("appendicular-lean-mass-index", 5.0, "kg/m2", 150),
                    Obs("grip-strength", 14, "kg", 20, laterality="right"),
                    Obs("grip-strength", 12, "kg", 20, laterality="left"),
                    Obs("gait-speed", 0.9, "m/s", 20)]),
        Example("bone-risk-medication", "bone-risk-medication",
                "Woman, 68: prednisone 5 mg daily for 200 days; last DXA (normal) 3 years ago", "female",
                born(68, anchor), [Obs("t-score", -0.6, "{T-score}", 1100, site="lumbar-spine"),
                                   Obs("t-score", -0.8, "{T-score}", 1100, site="total-hip")],
                medications=[Med("rxnorm", "312617", 1, 200)]),
        Example("healthy", None,
                "Woman, 60: 25(OH)D 34 ng/mL, normal DXA, normal grip and muscle mass", "female",
                born(60, anchor), [
                    Obs("vitamin-d-25oh", 34, "ng/mL", 40),
                    Obs("t-score", -0.4, "{T-score}", 300, site="lumbar-spine"),
                    Obs("t-score", -0.7, "{T-score}", 300, site="total-hip"),
                    Obs("appendicular-lean-mass-index", 6.3, "kg/m2", 300),
                    Obs("grip-strength", 27, "kg", 40, laterality="right"),
                    Obs("grip-strength", 25, "kg", 40, laterality="left"),
                    Obs("gait-speed", 1.2, "m/s", 40)]),
    ]


def _code_index(term: Any) -> dict[tuple[str, str | None, str | None, str | None], tuple[str, str, str]]:
    """(kind, site, laterality, property) → (system, code, display); first value-set entry wins.
    ``property`` (mass- or substance-concentration) makes a 25(OH)D in nmol/L get a
    moles/volume code, as normalize requires."""
    index: dict[tuple[str, str | None, str | None, str | None], tuple[str, str, str]] = {}
    for key, meaning in term.observation_codes.items():
        system, code = key.rsplit("|", 1)
        for prop in {meaning.property, None}:
            index.setdefault((meaning.kind, meaning.site, meaning.laterality, prop),
                             (system, code, meaning.display))
    return index


def _unit_property(term: Any, kind: str, unit: str) -> str | None:
    rule = term.units[kind].accepted.get(unit) if kind in term.units else None
    return getattr(rule, "property", None)


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def build(example: Example, anchor: date, term: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    index = _code_index(term)
    pid = f"mskcds-{example.name}"
    patient = {"resourceType": "Patient", "id": pid,
               "meta": {"tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                 "code": "HTEST", "display": "test health data"}]},
               "name": [{"family": "Example", "given": [example.name.replace("-", " ").title()]}],
               "gender": example.gender, "birthDate": example.birth_date.isoformat()}
    observations = []
    for i, o in enumerate(example.observations):
        try:
            system, code, display = index[(o.kind, o.site, o.laterality,
                                           _unit_property(term, o.kind, o.unit))]
        except KeyError:
            raise SystemExit(f"no value-set code for {o.kind} site={o.site} laterality={o.laterality}")
        day = anchor - timedelta(days=o.days_ago)
        quantity: dict[str, Any] = {"value": o.value, "unit": UNIT_TEXT.get(o.unit, o.unit),
                                    "system": UCUM, "code": o.unit}
        if o.comparator:
            quantity["comparator"] = o.comparator
        observations.append({
            "resourceType": "Observation", "id": f"{pid}-obs-{i + 1}", "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": CATEGORY[o.kind]}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}],
                     "text": display},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": f"{day.isoformat()}T09:30:00Z",
            "valueQuantity": quantity,
        })
    conditions = []
    for i, (sys_key, code, onset) in enumerate(example.coded):
        system = term.code_systems[sys_key]
        display = term.condition_codes[f"{system}|{code}"][0].display
        cond: dict[str, Any] = {
            "resourceType": "Condition", "id": f"{pid}-coded-{i + 1}",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{pid}"}}
        if onset is not None:
            cond["onsetDateTime"] = (anchor - timedelta(days=onset)).isoformat()
        conditions.append(cond)
    for i, category in enumerate(example.conditions):
        key = next(k for k, cats in term.condition_codes.items()
                   if any(c.category == category for c in cats))
        system, code = key.rsplit("|", 1)
        display = next(c.display for c in term.condition_codes[key] if c.category == category)
        conditions.append({
            "resourceType": "Condition", "id": f"{pid}-cond-{i + 1}",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]},
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": {"reference": f"Patient/{pid}"},
            "recordedDate": (anchor - timedelta(days=400)).isoformat(),
        })
    medications = []
    for i, m in enumerate(example.medications):
        system = term.code_systems[m.system]
        display = term.medication_codes[f"{system}|{m.code}"][0].display
        medications.append({
            "resourceType": "MedicationRequest", "id": f"{pid}-med-{i + 1}", "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": system, "code": m.code, "display": display}],
                                          "text": display},
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": (anchor - timedelta(days=m.days_ago)).isoformat(),
            "dosageInstruction": [{
                "text": f"{m.per_day:g} tablet by mouth once daily",
                "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": m.per_day, "unit": "tablet", "system": UCUM,
                                                  "code": UCUM_TABLET}}]}]})
    by_type: dict[str, list[dict[str, Any]]] = {"Observation": observations, "Condition": conditions,
                                                "MedicationRequest": medications}
    prefetch: dict[str, Any] = {}
    for key, template in term.prefetch_templates().items():
        if key == "patient":
            prefetch[key] = patient
            continue
        rtype = template.split("?", 1)[0]
        items = by_type.get(rtype, [])
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": _uid(example.name, key),
                                  "type": "searchset", "total": len(items)}
        if items:
            bundle["entry"] = [{"fullUrl": f"http://example.org/fhir/{r['resourceType']}/{r['id']}",
                                "resource": r, "search": {"mode": "match"}} for r in items]
        prefetch[key] = bundle
    request = {"hook": "patient-view", "hookInstance": _uid(example.name, "hookInstance"),
               "context": {"userId": "Practitioner/mskcds-example", "patientId": pid},
               "prefetch": prefetch}
    collection = {"resourceType": "Bundle", "id": _uid(example.name, "bundle"), "type": "collection",
                  "meta": {"tag": [{"system": "urn:mskcds:example", "code": example.name,
                                    "display": example.title}]},
                  "entry": [{"fullUrl": f"urn:uuid:{_uid(example.name, r['resourceType'], r['id'])}",
                             "resource": r} for r in [patient] + observations + conditions + medications]}
    return request, collection


def validate(request: dict[str, Any], bundle: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.patient import Patient

    Bundle.model_validate(bundle)
    for key, value in request["prefetch"].items():
        (Patient if key == "patient" else Bundle).model_validate(value)


def write_all(out_dir: Path, anchor: date = ANCHOR, rules_dir: Path = REPO / "rules") -> list[Path]:
    term = load_terminology(rules_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    index = {}
    for ex in examples(anchor):
        request, bundle = build(ex, anchor, term)
        validate(request, bundle)
        for suffix, doc in (("request", request), ("bundle", bundle)):
            path = out_dir / f"{ex.name}.{suffix}.json"
            path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
        index[ex.name] = {"finding": ex.finding, "title": ex.title}
        if ex.profile:
            index[ex.name]["profile"] = ex.profile
    manifest = {"as_of": anchor.isoformat(), "examples": index}
    path = out_dir / "examples.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", type=date.fromisoformat, default=ANCHOR,
                        help="anchor date the example dates are relative to (default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    for path in write_all(args.out, args.as_of):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
