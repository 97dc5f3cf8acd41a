"""Generate the order-hook examples in fhir_examples/orders/ (run from the repository root):

    .venv/bin/python fhir_examples/make_order_examples.py          # anchor date 2026-11-22
    .venv/bin/python fhir_examples/make_order_examples.py --as-of 2027-06-01 --out /tmp/x

For each order check, and for a clean order that gets no card, two requests with the same
patient record and draft orders: ``<name>.order-select.json`` (the checked order is the one
selected; an unrelated draft rides along unselected) and ``<name>.order-sign.json`` (every draft
is checked). The record is built as in make_examples.py (observation and condition codes looked
up in rules/valuesets.yaml by kind and category); medications on record and draft orders name
their drug in text, with a code only where rules/valuesets.yaml or rules/orders.yaml lists one.
Every resource is validated with fhir.resources.R4B; ids and hookInstance values are derived
deterministically, so re-running gives the same files.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from make_examples import ANCHOR, UCUM, Example, Obs, _uid, born, build  # noqa: E402

from cds.knowledge.terminology import load_terminology  # noqa: E402

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"


@dataclass
class Med:
    """A medication: text (and an optional RxNorm code), dose per administration, timing."""

    text: str
    dose: float | None = None
    unit: str | None = None            # UCUM code of the dose
    frequency: int = 1
    period: float = 1
    period_unit: str = "d"
    bounds_days: int | None = None     # timing.repeat.boundsDuration in days
    rxnorm: str | None = None
    status: str = "draft"


@dataclass
class Test:
    text: str
    loinc: str


@dataclass
class OrderExample:
    name: str
    finding: str | None                # the card the checked draft must produce (None: no card)
    title: str
    record: Example
    draft: Med | Test                  # the checked (selected) draft order
    on_record: list[Med] = field(default_factory=list)


def order_examples(anchor: date) -> list[OrderExample]:
    def rec(name: str, gender: str, age: int, obs: list[Obs], conditions: list[str] | None = None) -> Example:
        return Example(name, None, name, gender, born(age, anchor), obs, conditions or [])

    egfr_ok = Obs("egfr", 72, "mL/min/{1.73_m2}", 40)
    vd_ok = Obs("vitamin-d-25oh", 34, "ng/mL", 60)
    alendronate = Med("Alendronate sodium 70 MG Oral Tablet", 1, "{tbl}", 1, 1, "wk", rxnorm="904431")
    return [
        OrderExample("antiresorptive-low-vitamin-d", "order-antiresorptive-low-vitamin-d",
                     "Woman, 70: alendronate ordered with 25(OH)D 14 ng/mL",
                     rec("antiresorptive-low-vitamin-d", "female", 70,
                         [Obs("vitamin-d-25oh", 14, "ng/mL", 30), egfr_ok], ["osteoporosis"]), alendronate),
        OrderExample("antiresorptive-no-vitamin-d", "order-antiresorptive-no-vitamin-d",
                     "Woman, 68: risedronate ordered, no 25(OH)D in the last 12 months",
                     rec("antiresorptive-no-vitamin-d", "female", 68,
                         [Obs("vitamin-d-25oh", 31, "ng/mL", 500), egfr_ok], ["osteoporosis"]),
                     Med("Risedronate sodium 35 MG Oral Tablet", 1, "{tbl}", 1, 1, "wk")),
        OrderExample("antiresorptive-kidney", "order-antiresorptive-kidney",
                     "Man, 75: zoledronic acid ordered with eGFR 28 (label: contraindicated below 35)",
                     rec("antiresorptive-kidney", "male", 75,
                         [vd_ok, Obs("egfr", 28, "mL/min/{1.73_m2}", 20)], ["osteoporosis"]),
                     Med("Zoledronic acid 5 MG/100 ML injection (Reclast), once yearly", 5, "mg", 1, 1, "a")),
        OrderExample("denosumab-kidney", "order-denosumab-kidney",
                     "Woman, 80: denosumab ordered with eGFR 22 (boxed warning below 30)",
                     rec("denosumab-kidney", "female", 80,
                         [vd_ok, Obs("egfr", 22, "mL/min/{1.73_m2}", 20)], ["osteoporosis"]),
                     Med("Denosumab 60 MG/ML prefilled syringe (Prolia), every 6 months", 60, "mg", 1, 6, "mo")),
        OrderExample("vitamin-d-high-dose", "order-vitamin-d-high-dose",
                     "Woman, 60: ergocalciferol 50,000 IU weekly ordered with 25(OH)D 72 ng/mL",
                     rec("vitamin-d-high-dose", "female", 60, [Obs("vitamin-d-25oh", 72, "ng/mL", 25)]),
                     Med("Ergocalciferol 1.25 MG (50,000 unit) oral capsule", 1, "{capsule}", 1, 1, "wk",
                         rxnorm="1367410")),
        OrderExample("vitamin-d-duplicate", "order-vitamin-d-duplicate",
                     "Man, 66: cholecalciferol ordered while another vitamin D product is active",
                     rec("vitamin-d-duplicate", "male", 66, [Obs("vitamin-d-25oh", 28, "ng/mL", 90)]),
                     Med("Cholecalciferol (vitamin D3) 2000 unit oral tablet", 2000, "[iU]"),
                     on_record=[Med("Cholecalciferol (vitamin D3) 1000 unit oral tablet", 1000, "[iU]",
                                    status="active")]),
        OrderExample("vitamin-d-retest", "order-vitamin-d-retest",
                     "Woman, 50: 25(OH)D ordered 40 days after the last result",
                     rec("vitamin-d-retest", "female", 50, [Obs("vitamin-d-25oh", 30, "ng/mL", 40)],
                         ["osteoporosis"]),
                     Test("25-Hydroxyvitamin D (total), serum", "62292-8")),
        OrderExample("vitamin-d-test-low-value", "order-vitamin-d-test-low-value",
                     "Man, 45: 25(OH)D ordered with no indication on record",
                     rec("vitamin-d-test-low-value", "male", 45, []),
                     Test("25-Hydroxyvitamin D (total), serum", "62292-8")),
        OrderExample("dxa-repeat", "order-dxa-repeat",
                     "Woman, 68: DXA ordered 300 days after a normal scan, no treatment since",
                     rec("dxa-repeat", "female", 68,
                         [Obs("t-score", -0.8, "{T-score}", 300, site="lumbar-spine"),
                          Obs("t-score", -0.6, "{T-score}", 300, site="total-hip")]),
                     Test("DXA bone density, hip and spine", "38268-9")),
        OrderExample("dxa-low-value", "order-dxa-low-value",
                     "Woman, 55: DXA ordered with no osteoporosis risk factor on record (CMS249)",
                     rec("dxa-low-value", "female", 55, [Obs("bmi", 24.5, "kg/m2", 60)]),
                     Test("DXA bone density, hip and spine", "38268-9")),
        OrderExample("glucocorticoid-bone-protection", "order-glucocorticoid-bone-protection",
                     "Man, 62: prednisone 10 mg daily for 6 months ordered, no DXA on record",
                     rec("glucocorticoid-bone-protection", "male", 62, [vd_ok]),
                     Med("Prednisone 10 MG Oral Tablet", 1, "{tbl}", bounds_days=182, rxnorm="198145")),
        OrderExample("aromatase-inhibitor-bone-health", "order-aromatase-inhibitor-bone-health",
                     "Woman, 63: anastrozole ordered with no DXA in the last 2 years",
                     rec("aromatase-inhibitor-bone-health", "female", 63, [vd_ok]),
                     Med("Anastrozole 1 MG Oral Tablet", 1, "{tbl}", rxnorm="199224")),
        OrderExample("adt-bone-health", "order-adt-bone-health",
                     "Man, 71: leuprolide ordered with no DXA in the last 2 years (CMS645)",
                     rec("adt-bone-health", "male", 71, [vd_ok]),
                     Med("Leuprolide acetate 22.5 MG depot injection, every 3 months", 22.5, "mg", 1, 3, "mo")),
        OrderExample("clean-order", None,
                     "Woman, 72: alendronate ordered with 25(OH)D 35 ng/mL and eGFR 75: no card",
                     rec("clean-order", "female", 72,
                         [Obs("vitamin-d-25oh", 35, "ng/mL", 30), Obs("egfr", 75, "mL/min/{1.73_m2}", 30)],
                         ["osteoporosis"]), alendronate),
    ]


def _medication(med: Med, rid: str, pid: str, anchor: date, rtype: str = "MedicationRequest") -> dict[str, Any]:
    concept: dict[str, Any] = {"text": med.text}
    if med.rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": med.rxnorm, "display": med.text}]
    res: dict[str, Any] = {"resourceType": rtype, "id": rid, "status": med.status, "intent": "order",
                           "medicationCodeableConcept": concept, "subject": {"reference": f"Patient/{pid}"},
                           "authoredOn": (anchor - timedelta(days=0 if med.status == "draft" else 120)).isoformat()}
    if med.dose is not None:
        repeat: dict[str, Any] = {"frequency": med.frequency, "period": med.period, "periodUnit": med.period_unit}
        if med.bounds_days:
            repeat["boundsDuration"] = {"value": med.bounds_days, "unit": "days", "system": UCUM, "code": "d"}
        res["dosageInstruction"] = [{"text": med.text, "timing": {"repeat": repeat}, "doseAndRate": [
            {"doseQuantity": {"value": med.dose, "unit": med.unit, "system": UCUM, "code": med.unit}}]}]
    return res


def _test(test: Test, rid: str, pid: str, anchor: date) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": rid, "status": "draft", "intent": "order",
            "code": {"coding": [{"system": LOINC, "code": test.loinc, "display": test.text}], "text": test.text},
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": anchor.isoformat()}


def build_order(ex: OrderExample, anchor: date, term: Any) -> dict[str, dict[str, Any]]:
    request, _bundle = build(ex.record, anchor, term)
    pid = request["context"]["patientId"]
    meds = [_medication(m, f"{pid}-med-{i + 1}", pid, anchor) for i, m in enumerate(ex.on_record)]
    if meds:
        request["prefetch"]["medications"] = {
            "resourceType": "Bundle", "type": "searchset", "total": len(meds),
            "entry": [{"fullUrl": f"http://example.org/fhir/MedicationRequest/{m['id']}", "resource": m,
                       "search": {"mode": "match"}} for m in meds]}
    draft_id = f"{pid}-draft-1"
    draft = (_medication(ex.draft, draft_id, pid, anchor) if isinstance(ex.draft, Med)
             else _test(ex.draft, draft_id, pid, anchor))
    other = {"resourceType": "NutritionOrder", "id": f"{pid}-draft-2", "status": "draft", "intent": "order",
             "patient": {"reference": f"Patient/{pid}"}, "dateTime": anchor.isoformat(),
             "oralDiet": {"type": [{"text": "Regular diet"}]}}
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": draft}, {"resource": other}]}
    out = {}
    for hook in ("order-select", "order-sign"):
        context: dict[str, Any] = {"userId": "Practitioner/mskcds-example", "patientId": pid,
                                   "draftOrders": bundle}
        if hook == "order-select":
            context["selections"] = [f"{draft['resourceType']}/{draft_id}"]
        out[hook] = {"hook": hook, "hookInstance": _uid(ex.name, hook), "context": context,
                     "prefetch": request["prefetch"]}
    return out


def validate(doc: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.patient import Patient

    Bundle.model_validate(doc["context"]["draftOrders"])
    for key, value in doc["prefetch"].items():
        (Patient if key == "patient" else Bundle).model_validate(value)


def write_all(out_dir: Path, anchor: date = ANCHOR, rules_dir: Path = REPO / "rules") -> list[Path]:
    term = load_terminology(rules_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    for ex in order_examples(anchor):
        for hook, doc in build_order(ex, anchor, term).items():
            validate(doc)
            path = out_dir / f"{ex.name}.{hook}.json"
            path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            written.append(path)
        index[ex.name] = {"finding": ex.finding, "title": ex.title}
    path = out_dir / "examples.json"
    path.write_text(json.dumps({"as_of": anchor.isoformat(), "examples": index}, indent=2) + "\n",
                    encoding="utf-8")
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", type=date.fromisoformat, default=ANCHOR)
    parser.add_argument("--out", type=Path, default=HERE / "orders")
    args = parser.parse_args(argv)
    for path in write_all(args.out, args.as_of):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
