"""bone-risk-medication: bone-harming medicines on record, edge by edge.

The tables are written by hand from the sources the rules cite:
- ACR 2022 GIOP guideline (Humphrey et al., Arthritis Rheumatol 2023;75:2088), Rec 1: "as soon as
  possible after initiation of >= 2.5 mg/day GC treatment for > 3 months" assess fracture risk with
  BMD by DXA; Rec 2: calcium and vitamin D for all patients receiving GCs. "> 3 months" is counted
  as more than 90 days (CMS249 counts 90 days of glucocorticoids): 90 days is not enough, 91 is.
- Prednisolone label, equivalent doses: 5 mg prednisone = 5 mg prednisolone = 4 mg
  methylprednisolone = 20 mg hydrocortisone.
- ASCO 2019 (Shapiro et al.) Rec 1.2 / 2.1: aromatase inhibitors add to fracture risk; DXA offered.
- CMS645: a DXA within 2 years before the start of androgen deprivation therapy.
- Service policy (medication_risk.yaml): no card with a DXA from the last 2 years (730 days).
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from cds.cards.builder import build_cards
from cds.clinical.evaluate import evaluate
from cds.config import Config
from cds.fhir.normalize import normalize
from cds.knowledge.rules import load_rules

TODAY = date(2026, 11, 22)
RULES = load_rules(Config())
RXNORM = RULES.terminology.code_systems["rxnorm"]
SNOMED = RULES.terminology.code_systems["snomed"]
UCUM = "http://unitsofmeasure.org"
PID = "p-bone-med"


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def patient(gender: str = "female", born: str = "1958-03-14", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": PID, "gender": gender, "birthDate": born, **extra}


def daily(value: float, unit: str = "mg", **dosage: Any) -> list[dict[str, Any]]:
    """One dosage line: ``value`` ``unit`` once a day."""
    code = {"mg": "mg", "tablet": "{tbl}"}[unit]
    return [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", **dosage.pop("repeat", {})}},
             "doseAndRate": [{"doseQuantity": {"value": value, "unit": unit, "system": UCUM, "code": code}}],
             **dosage}]


def concept(code: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if code:
        out["coding"] = [{"system": RXNORM, "code": code}]
    if text:
        out["text"] = text
    return out


def request(med: dict[str, Any], days: int | None = 120, status: str = "active",
            dosage: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "MedicationRequest", "id": "mr-1", "status": status,
                           "intent": "order", "subject": {"reference": f"Patient/{PID}"},
                           "medicationCodeableConcept": med, **extra}
    if days is not None:
        res["authoredOn"] = ago(days)
    if dosage is not None:
        res["dosageInstruction"] = dosage
    return res


def statement(med: dict[str, Any], start_days: int | None = 120, end_days: int | None = None,
              status: str = "active", dosage: list[dict[str, Any]] | None = None,
              **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "MedicationStatement", "id": "ms-1", "status": status,
                           "subject": {"reference": f"Patient/{PID}"}, "medicationCodeableConcept": med,
                           **extra}
    period = {}
    if start_days is not None:
        period["start"] = ago(start_days)
    if end_days is not None:
        period["end"] = ago(end_days)
    if period:
        res["effectivePeriod"] = period
    if dosage is not None:
        res["dosage"] = dosage
    return res


def t_score(days: int, value: float = -0.5) -> dict[str, Any]:
    code = next(k for k, m in RULES.terminology.observation_codes.items()
                if m.kind == "t-score" and m.site == "lumbar-spine")
    system, c = code.rsplit("|", 1)
    return {"resourceType": "Observation", "id": f"dxa-{days}", "status": "final",
            "code": {"coding": [{"system": system, "code": c}]}, "subject": {"reference": f"Patient/{PID}"},
            "effectiveDateTime": ago(days), "valueQuantity": {"value": value, "system": UCUM, "code": "{T-score}"}}


def run(*resources: dict[str, Any], pt: dict[str, Any] | None = None) -> list[Any]:
    facts = normalize([pt or patient(), *resources], PID, RULES, as_of=TODAY)
    return evaluate(facts, RULES)


def codes(*resources: dict[str, Any], pt: dict[str, Any] | None = None) -> list[str]:
    return [f.code for f in run(*resources, pt=pt)]


def card(*resources: dict[str, Any]) -> dict[str, Any]:
    facts = normalize([patient(), *resources], PID, RULES, as_of=TODAY)
    found = [c for c in build_cards(evaluate(facts, RULES), facts, RULES)
             if c["source"]["topic"]["code"] == "bone-risk-medication"]
    assert len(found) == 1, found
    return found[0]


PREDNISONE_5 = "312617"        # prednisone 5 MG Oral Tablet (VSAC 196.12.1266)
PREDNISONE_2_5 = "198146"      # prednisone 2.5 MG Oral Tablet
METHYLPRED_4 = "259966"        # methylprednisolone 4 MG Oral Tablet
ANASTROZOLE = "199224"         # anastrozole 1 MG Oral Tablet (VSAC 196.12.1265)
LEUPROLIDE = "1115257"         # 1.5 ML leuprolide acetate 30 MG/ML Prefilled Syringe (VSAC 1151.48)

# (case, medicine, dosage, days since start, card?) - ACR 2022 Rec 1 and the prednisolone label
GLUCOCORTICOID_TABLE = [
    ("2.5 mg/day is the limit (>= 2.5)", concept(text="prednisone"), daily(2.5), 120, True),
    ("2.4 mg/day is below it", concept(text="prednisone"), daily(2.4), 120, False),
    ("91 days is more than 3 months", concept(text="prednisone"), daily(5), 91, True),
    ("90 days is not more than 3 months", concept(text="prednisone"), daily(5), 90, False),
    ("89 days", concept(text="prednisone"), daily(5), 89, False),
    ("prednisolone 2.5 mg = prednisone 2.5 mg", concept(text="prednisolone"), daily(2.5), 120, True),
    ("prednisolone 2.4 mg", concept(text="prednisolone"), daily(2.4), 120, False),
    ("methylprednisolone 2 mg = prednisone 2.5 mg (4 : 5)", concept(text="methylprednisolone"), daily(2), 120, True),
    ("methylprednisolone 1.9 mg = prednisone 2.375 mg", concept(text="methylprednisolone"), daily(1.9), 120, False),
    ("hydrocortisone 10 mg = prednisone 2.5 mg (20 : 5)", concept(text="hydrocortisone"), daily(10), 120, True),
    ("hydrocortisone 9 mg = prednisone 2.25 mg", concept(text="hydrocortisone"), daily(9), 120, False),
    ("one 2.5 mg tablet a day (strength from the product code)", concept(PREDNISONE_2_5), daily(1, "tablet"), 120, True),
    ("one methylprednisolone 4 mg tablet = prednisone 5 mg", concept(METHYLPRED_4), daily(1, "tablet"), 120, True),
    ("tablets with no known strength: dose unreadable", concept(text="prednisone"), daily(1, "tablet"), 120, False),
    ("dose as a range: unreadable", concept(text="prednisone"),
     [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
       "doseAndRate": [{"doseRange": {"low": {"value": 5, "code": "mg", "system": UCUM},
                                      "high": {"value": 10, "code": "mg", "system": UCUM}}}]}], 120, False),
    ("as needed: unreadable", concept(text="prednisone"), daily(5, asNeededBoolean=True), 120, False),
    ("no dosage at all", concept(text="prednisone"), None, 120, False),
    ("a 60-day course (boundsDuration) ended before 3 months", concept(text="prednisone"),
     daily(5, repeat={"boundsDuration": {"value": 60, "unit": "d", "system": UCUM, "code": "d"}}), 200, False),
    ("a 120-day course (boundsDuration) for 150 days so far", concept(text="prednisone"),
     daily(5, repeat={"boundsDuration": {"value": 120, "unit": "d", "system": UCUM, "code": "d"}}), 150, True),
]


@pytest.mark.parametrize("case,med,dosage,days,expected", GLUCOCORTICOID_TABLE,
                         ids=[row[0] for row in GLUCOCORTICOID_TABLE])
def test_glucocorticoid_dose_and_duration_edges(case, med, dosage, days, expected):
    assert ("bone-risk-medication" in codes(request(med, days, dosage=dosage))) is expected, case


@pytest.mark.parametrize("case,med,dosage,days,expected", GLUCOCORTICOID_TABLE,
                         ids=[row[0] for row in GLUCOCORTICOID_TABLE])
def test_medication_statement_is_read_as_the_request_is(case, med, dosage, days, expected):
    # the same table through MedicationStatement.dosage / effectivePeriod.start
    assert ("bone-risk-medication" in codes(statement(med, days, dosage=dosage))) is expected, case


@pytest.mark.parametrize("case,resource,expected", [
    ("request stopped", request(concept(text="prednisone"), 200, "stopped", dosage=daily(5)), False),
    ("request completed", request(concept(text="prednisone"), 200, "completed", dosage=daily(5)), False),
    ("statement completed, ended last month", statement(concept(text="prednisone"), 200, 30, "completed",
                                                        dosage=daily(5)), False),
    ("statement active but its period ended last month", statement(concept(text="prednisone"), 200, 30,
                                                                   dosage=daily(5)), False),
    ("statement with a planned end next month", statement(concept(text="prednisone"), 200, -30,
                                                          dosage=daily(5)), True),
    ("statement dated by effectiveDateTime only: no start, no duration",
     {**statement(concept(text="prednisone"), None, dosage=daily(5)), "effectiveDateTime": ago(200)}, False),
    ("authoredOn a month only (2026-05): the start is not known to the day",
     request(concept(text="prednisone"), None, dosage=daily(5), authoredOn="2026-05"), False),
    ("authoredOn in the future", request(concept(text="prednisone"), -10, dosage=daily(5)), False),
    ("30-day supply, no repeats, authored 200 days ago: 30 days",
     request(concept(text="prednisone"), 200, dosage=daily(5),
             dispenseRequest={"expectedSupplyDuration": {"value": 30, "unit": "d", "system": UCUM, "code": "d"}}),
     False),
    ("30-day supply with 3 repeats: 120 days",
     request(concept(text="prednisone"), 200, dosage=daily(5),
             dispenseRequest={"numberOfRepeatsAllowed": 3,
                              "expectedSupplyDuration": {"value": 30, "unit": "d", "system": UCUM, "code": "d"}}),
     True),
    ("a dosage that is not valid R4 (timing as a string)",
     request(concept(text="prednisone"), 200, dosage=[{"timing": "daily"}]), False),
])
def test_stopped_ended_or_undated_courses_make_no_card(case, resource, expected):
    assert ("bone-risk-medication" in codes(resource)) is expected, case


@pytest.mark.parametrize("case,dxa_days,expected", [
    ("DXA 1 year ago: nothing to do", 365, False),
    ("DXA 729 days ago: within 2 years", 729, False),
    ("DXA 3 years ago: reassess", 1095, True),
    ("no DXA on record", None, True),
    ("DXA dated after today: the newest is not read, no guess", -5, False),
])
def test_only_without_a_dxa_in_the_last_two_years(case, dxa_days, expected):
    dxa = [t_score(dxa_days)] if dxa_days is not None else []
    gc = request(concept(PREDNISONE_5), 200, dosage=daily(1, "tablet"))
    assert ("bone-risk-medication" in codes(gc, *dxa)) is expected, case


@pytest.mark.parametrize("case,resource,grade", [
    ("anastrozole request active", request(concept(ANASTROZOLE), 30), "aromatase-inhibitor"),
    ("letrozole statement, by name", statement(concept(text="Letrozole 2.5 mg tablet"), 30), "aromatase-inhibitor"),
    ("leuprolide request active (CMS645)", request(concept(LEUPROLIDE), 20), "androgen-deprivation"),
    ("goserelin statement, by name", statement(concept(text="Zoladex (goserelin) implant"), 20),
     "androgen-deprivation"),
])
def test_aromatase_inhibitor_and_androgen_deprivation(case, resource, grade):
    found = [f for f in run(resource) if f.code == "bone-risk-medication"]
    assert len(found) == 1, case
    assert found[0].variables.grade == grade


@pytest.mark.parametrize("status", ["stopped", "completed", "entered-in-error"])
def test_ended_aromatase_inhibitor_makes_no_card(status):
    assert "bone-risk-medication" not in codes(request(concept(ANASTROZOLE), 30, status))


def test_ai_with_recent_dxa_makes_no_card():
    assert "bone-risk-medication" not in codes(request(concept(ANASTROZOLE), 30), t_score(200))


def test_glucocorticoid_card_names_the_medicine_dose_and_start():
    c = card(request(concept(METHYLPRED_4), 150, dosage=daily(1, "tablet")), t_score(1100))
    assert len(c["summary"]) < 140
    assert "methylprednisolone" in c["summary"] and "4 mg/day (= 5 mg/day prednisone)" in c["summary"]
    assert ago(150) in c["summary"] and "150 days" in c["summary"]
    assert f"Last DXA: {ago(1100)}" in c["detail"]
    assert "calcium and vitamin d" in c["detail"].lower()   # ACR 2022 Rec 2, glucocorticoids only
    assert len(c["detail"]) <= 600
    (suggestion,) = c["suggestions"]
    resource = suggestion["actions"][0]["resource"]
    assert resource["resourceType"] == "ServiceRequest" and resource["status"] == "draft"
    assert resource["code"] == card_dxa_code()


def card_dxa_code() -> dict[str, Any]:
    coding = dict(RULES.orderable("dxa-scan") or {})
    return {"coding": [coding], "text": coding["display"]}


@pytest.mark.parametrize("resource,words", [
    (request(concept(ANASTROZOLE), 30), ["anastrozole", "aromatase inhibitor", ago(30)]),
    (request(concept(LEUPROLIDE), 20), ["leuprolide", "androgen deprivation", "CMS645"]),
])
def test_cancer_therapy_cards_name_the_medicine(resource, words):
    c = card(resource)
    assert len(c["summary"]) < 140
    for w in words:
        assert w in c["summary"], (w, c["summary"])
    assert "calcium and vitamin d for everyone on a glucocorticoid" not in c["detail"].lower()
    assert "DXA none on record" not in c["detail"] and "Last DXA: none on record" in c["detail"]


def test_glucocorticoid_outranks_aromatase_inhibitor_in_one_card():
    found = [f for f in run(request(concept(ANASTROZOLE), 30),
                            {**request(concept(text="prednisone"), 200, dosage=daily(5)), "id": "mr-2"})
             if f.code == "bone-risk-medication"]
    assert [f.variables.grade for f in found] == ["glucocorticoid"]


def test_replaces_dxa_screening_due():
    # woman of 68, no DXA: screening by age would be due; the medicine is the more specific reason
    assert codes() == ["dxa-screening-due"]
    assert codes(request(concept(ANASTROZOLE), 30)) == ["bone-risk-medication"]


def test_not_beside_an_untreated_fracture_card():
    hip = {"resourceType": "Condition", "id": "fx", "subject": {"reference": f"Patient/{PID}"},
           "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                          "code": "active"}]},
           "code": {"coding": [{"system": SNOMED, "code": "431031001"}]}, "onsetDateTime": ago(100)}
    assert codes(hip, request(concept(ANASTROZOLE), 30)) == ["fracture-treatment-gap"]


def test_not_beside_osteoporosis_by_an_old_dxa():
    gc = request(concept(text="prednisone"), 200, dosage=daily(5))
    assert codes(gc, t_score(1100, -2.8)) == ["osteoporosis"]
    assert "bone-risk-medication" in codes(gc, t_score(1100, -1.8))   # low bone mass: the medicine tips it


def test_deceased_patient_gets_nothing():
    assert codes(request(concept(ANASTROZOLE), 30), pt=patient(deceasedDateTime=ago(3))) == []


def test_osteoporosis_therapy_on_record_is_noted():
    alendronate = {**request(concept("904431"), 60), "id": "mr-ale"}
    c = card(request(concept(ANASTROZOLE), 30), alendronate)
    assert "Osteoporosis therapy is on record." in c["detail"]
    assert "Offer a bisphosphonate or denosumab" not in c["detail"]


def supply(days: int) -> dict[str, Any]:
    return {"expectedSupplyDuration": {"value": days, "unit": "d", "system": UCUM, "code": "d"}}


def refill(i: int, authored_days_ago: int, status: str = "completed", mg: float = 5) -> dict[str, Any]:
    """A 30-day prednisone prescription (ACR 2022 counts the days on treatment, however they
    are prescribed)."""
    return {**request(concept(text="prednisone"), authored_days_ago, status, dosage=daily(mg),
                      dispenseRequest=supply(30)), "id": f"mr-refill-{i}"}


# (case, [(authored days ago, status, mg/day)], card?, first day counted) - monthly refills
# joined into one course when each starts within the refill gap (7 days, service policy) of the
# end of the one before
REFILL_TABLE = [
    ("seven monthly refills, the last one active: 200 days", [(200, "completed", 5), (170, "completed", 5),
     (140, "completed", 5), (110, "completed", 5), (80, "completed", 5), (50, "completed", 5),
     (20, "active", 5)], True, 200),
    ("the same refills with no active one: no current course", [(200, "completed", 5), (170, "completed", 5),
     (140, "completed", 5), (110, "completed", 5)], False, None),
    ("active 30 days, one earlier month 7 days apart: 67 days", [(67, "completed", 5), (30, "active", 5)],
     False, None),
    ("three months joined with a 7-day gap each: 100 days", [(100, "completed", 5), (63, "completed", 5),
     (26, "active", 5)], True, 100),
    ("an 8-day gap breaks the course: 26 days", [(101, "completed", 5), (63, "completed", 5), (25, "active", 5)],
     False, None),
    ("an earlier course below 2.5 mg/day does not count", [(200, "completed", 2), (170, "completed", 2),
     (140, "completed", 2), (110, "completed", 2), (80, "completed", 2), (50, "completed", 2),
     (20, "active", 5)], False, None),
]


@pytest.mark.parametrize("case,records,expected,first", REFILL_TABLE, ids=[row[0] for row in REFILL_TABLE])
def test_refills_are_one_course(case, records, expected, first):
    found = [f for f in run(*(refill(i, d, s, mg) for i, (d, s, mg) in enumerate(records)))
             if f.code == "bone-risk-medication"]
    assert bool(found) is expected, case
    if expected:
        assert found[0].variables.since == ago(first)
        assert found[0].variables.days == first


def dxa_report(days_ago: int) -> dict[str, Any]:
    """A DXA report with no readable results (FHIR R4 core example diagnosticreport-example-dxa:
    LOINC 38269-7, a conclusion and no coded results): still a DXA done."""
    return {"resourceType": "DiagnosticReport", "id": f"dxa-report-{days_ago}", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "38269-7"}]},
            "subject": {"reference": f"Patient/{PID}"}, "effectiveDateTime": ago(days_ago),
            "conclusion": "Bone density report (text only)"}


@pytest.mark.parametrize("case,report_days,expected", [
    ("DXA report 1 year ago, results not readable: a DXA was done", 365, False),
    ("DXA report 3 years ago: reassess", 1095, True),
])
def test_a_dxa_report_is_a_dxa_done(case, report_days, expected):
    gc = request(concept(ANASTROZOLE), 30)
    assert ("bone-risk-medication" in codes(gc, dxa_report(report_days))) is expected, case
