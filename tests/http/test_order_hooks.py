"""order-select / order-sign over real HTTP (gunicorn): every order check and its edges (exact
cut-offs in both unit systems, stale, missing and doubtful values), the spec's own contexts,
the FHIR-server fallback, the delete/create actions and feedback on order cards.

Requests are built here (dates relative to the server's real "today") with the generator's
helpers, so observation codes come from rules/valuesets.yaml by kind."""
from __future__ import annotations

import copy
import json
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from conftest import run_server

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "fhir_examples"
ORDER_EXAMPLES = EXAMPLES / "orders"
sys.path.insert(0, str(EXAMPLES))
import make_examples as mx  # noqa: E402
import make_order_examples as mo  # noqa: E402

SELECT = "/cds-services/bone-health-order-select"
SIGN = "/cds-services/bone-health-order-sign"
EGFR = "mL/min/{1.73_m2}"


def today() -> date:
    return datetime.now(timezone.utc).date()


@pytest.fixture(scope="module")
def server(fhir, tmp_path_factory):
    env = {"MSKCDS_REQUIRE_AUTH": "false", "MSKCDS_ALLOWED_FHIR_SERVERS": fhir.base_url}
    with run_server(env, tmp_path_factory.mktemp("orders")) as proc:
        yield proc


@pytest.fixture(scope="module")
def term():
    from cds.knowledge.terminology import load_terminology
    return load_terminology(REPO / "rules")


# --------------------------------------------------------------------------- request builders
def case(term, *, gender="female", age=70, obs=(), conditions=(), on_record=(), drafts=(),
         hook="order-sign", selected=None, birth=None) -> dict[str, Any]:
    """A full order-select/-sign request: the record as prefetch, ``drafts`` (Med/Test) as draft
    orders; order-select selects ``selected`` (indexes into drafts; default all)."""
    name = "t-" + uuid.uuid4().hex[:10]
    anchor = today()
    record = mx.Example(name, None, name, gender, birth or mx.born(age, anchor), list(obs), list(conditions))
    request, _ = mx.build(record, anchor, term)
    pid = request["context"]["patientId"]
    meds = [mo._medication(m, f"{pid}-rec-{i}", pid, anchor) for i, m in enumerate(on_record)]
    if meds:
        request["prefetch"]["medications"] = {"resourceType": "Bundle", "type": "searchset",
                                              "entry": [{"resource": m} for m in meds]}
    resources = [mo._medication(d, f"{pid}-d{i}", pid, anchor) if isinstance(d, mo.Med)
                 else mo._test(d, f"{pid}-d{i}", pid, anchor) for i, d in enumerate(drafts)]
    context: dict[str, Any] = {"userId": "PractitionerRole/t-1", "patientId": pid,
                               "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                               "entry": [{"resource": r} for r in resources]}}
    if hook == "order-select":
        picks = range(len(resources)) if selected is None else selected
        context["selections"] = [f"{resources[i]['resourceType']}/{resources[i]['id']}" for i in picks]
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context,
            "prefetch": request["prefetch"]}


def post(server, body, path=None):
    path = path or (SELECT if body.get("hook") == "order-select" else SIGN)
    r = requests.post(server.url(path), json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["cards"]


def topics(cards):
    return [c["source"]["topic"]["code"] for c in cards]


def vd(value, unit="ng/mL", days=30, comparator=None):
    return mx.Obs("vitamin-d-25oh", value, unit, days, comparator=comparator)


def egfr(value, days=30):
    return mx.Obs("egfr", value, EGFR, days)


ALENDRONATE = mo.Med("Alendronate sodium 70 MG Oral Tablet", 1, "{tbl}", 1, 1, "wk", rxnorm="904431")
RISEDRONATE = mo.Med("Risedronate sodium 35 MG Oral Tablet", 1, "{tbl}", 1, 1, "wk")
ZOLEDRONIC = mo.Med("Zoledronic acid 5 MG/100 ML (Reclast)", 5, "mg", 1, 1, "a")
DENOSUMAB = mo.Med("Denosumab 60 MG/ML (Prolia)", 60, "mg", 1, 6, "mo")
VD_TEST = mo.Test("25-Hydroxyvitamin D, serum", "62292-8")
DXA = mo.Test("DXA bone density", "38268-9")


def d3(iu, **kw):
    return mo.Med(f"Cholecalciferol (vitamin D3) {iu} unit oral tablet", iu, "[iU]", **kw)


# --------------------------------------------------------------------------- discovery + examples
def test_discovery_lists_both_order_services_with_prefetch(server):
    services = {s["id"]: s for s in requests.get(server.url("/cds-services"), timeout=10).json()["services"]}
    for sid, hook in (("bone-health-order-select", "order-select"), ("bone-health-order-sign", "order-sign")):
        s = services[sid]
        assert s["hook"] == hook and s["title"] != services["bone-muscle-health"]["title"]
        assert set(s["prefetch"]) == {"patient", "observations", "conditions", "medications"}
        assert "http://loinc.org|98979-8" in s["prefetch"]["observations"]   # eGFR is prefetched


ORDER_MANIFEST = json.loads((ORDER_EXAMPLES / "examples.json").read_text())


@pytest.fixture(scope="module")
def order_example_dir(tmp_path_factory, term) -> Path:
    anchor = date.fromisoformat(ORDER_MANIFEST["as_of"])
    if 0 <= (today() - anchor).days <= 30:
        return ORDER_EXAMPLES
    out = tmp_path_factory.mktemp("order-examples")
    mo.write_all(out, today())
    return out


@pytest.mark.parametrize("name", sorted(ORDER_MANIFEST["examples"]))
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_every_order_example_gives_its_card(server, order_example_dir, name, hook):
    body = json.loads((order_example_dir / f"{name}.{hook}.json").read_text())
    cards = post(server, body)
    finding = ORDER_MANIFEST["examples"][name]["finding"]
    assert topics(cards) == ([finding] if finding else [])
    for card in cards:
        assert len(card["summary"]) < 140 and card["source"]["url"].startswith("https://")
        assert "**Why:**" in card["detail"] and "**Consider next**" in card["detail"]
        # the citation leaves the detail for a link (the card stays short): the source is linked
        assert card["source"]["url"] in {link["url"] for link in card["links"]}
        _check_actions(card, body)


def _check_actions(card, body):
    """delete names an existing draft order; create carries a valid R4 resource with an id."""
    from fhir.resources.R4B import get_fhir_model_class

    drafts = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
              for e in body["context"]["draftOrders"]["entry"]}
    for s in card.get("suggestions", []):
        for a in s["actions"]:
            if a["type"] == "delete":
                assert a["resourceId"] in drafts and "resource" not in a
            else:
                assert a["type"] == "create" and a["resource"]["id"]
                get_fhir_model_class(a["resource"]["resourceType"]).model_validate(a["resource"])
                assert a["resource"]["subject"]["reference"] == f"Patient/{body['context']['patientId']}"


def test_committed_order_examples_are_what_the_generator_makes(tmp_path):
    mo.write_all(tmp_path, date.fromisoformat(ORDER_MANIFEST["as_of"]))
    for path in sorted(tmp_path.iterdir()):
        assert path.read_text() == (ORDER_EXAMPLES / path.name).read_text(), path.name


# --------------------------------------------------------------------------- 1 antiresorptive + vitamin D
@pytest.mark.parametrize("obs,expected", [
    ([vd(19.9)], ["order-antiresorptive-low-vitamin-d"]),
    ([vd(20)], []),                                        # deficiency is < 20 ng/mL
    ([vd(49.9, "nmol/L")], ["order-antiresorptive-low-vitamin-d"]),
    ([vd(50, "nmol/L")], []),                              # < 50 nmol/L as the guideline states it
    ([vd(15, comparator="<")], ["order-antiresorptive-low-vitamin-d"]),
    ([vd(25, comparator="<")], []),                        # "<25": deficient or not? no card on a guess
    ([vd(18), vd(24, days=30)], []),                       # same-day results that disagree
    ([vd(30, days=365)], []),                              # 12 months old: still current
    ([vd(30, days=366)], ["order-antiresorptive-no-vitamin-d"]),   # stale: none in the last 12 months
    ([], ["order-antiresorptive-no-vitamin-d"]),           # never measured: the absence is the finding
    ([vd(-4)], []),                                        # measured but unusable: not "none on record"
])
def test_antiresorptive_and_vitamin_d(server, term, obs, expected):
    body = case(term, obs=[*obs, egfr(70)], conditions=["osteoporosis"], drafts=[ALENDRONATE])
    assert topics(post(server, body)) == expected


def test_antiresorptive_vitamin_d_card_suggests_tests_unless_one_is_drafted(server, term):
    body = case(term, obs=[egfr(70)], drafts=[DENOSUMAB])
    (card,) = post(server, body)
    labels = [s["label"] for s in card["suggestions"]]
    assert any("25-hydroxyvitamin D" in l for l in labels) and any("calcium" in l for l in labels)
    body = case(term, obs=[egfr(70)], drafts=[DENOSUMAB, VD_TEST])
    cards = [c for c in post(server, body) if c["source"]["topic"]["code"] == "order-antiresorptive-no-vitamin-d"]
    assert cards and "suggestions" not in cards[0]
    assert "already among the draft orders" in cards[0]["detail"]


# --------------------------------------------------------------------------- 2 kidney
@pytest.mark.parametrize("drug,value,expected,indicator", [
    (ALENDRONATE, 34.9, ["order-antiresorptive-kidney"], "warning"),
    (ALENDRONATE, 35, [], None),
    (RISEDRONATE, 29.9, ["order-antiresorptive-kidney"], "warning"),
    (RISEDRONATE, 30, [], None),
    (ZOLEDRONIC, 34, ["order-antiresorptive-kidney"], "critical"),
    (ZOLEDRONIC, 35, [], None),
    (DENOSUMAB, 29, ["order-denosumab-kidney"], "warning"),
    (DENOSUMAB, 30, [], None),
])
def test_kidney_limits_of_the_labels(server, term, drug, value, expected, indicator):
    body = case(term, obs=[vd(35), egfr(value)], drafts=[drug])
    cards = post(server, body)
    assert topics(cards) == expected
    if expected:
        (card,) = cards
        assert card["indicator"] == indicator and f"eGFR {value:g}" in card["summary"]
        deletes = [a for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]
        if drug is DENOSUMAB:
            assert not deletes and "weekly" in card["detail"]
        else:
            assert [a["resourceId"] for a in deletes] == [body["context"]["draftOrders"]["entry"][0]["resource"]
                                                          ["resourceType"] + "/" + body["context"]["draftOrders"]
                                                          ["entry"][0]["resource"]["id"]]
            assert "creatinine clearance" in card["detail"]     # says eGFR stands in for it


@pytest.mark.parametrize("obs", [[vd(35)], [vd(35), egfr(20, days=366)], [vd(35), mx.Obs("egfr", 250, EGFR, 10)]])
def test_no_kidney_card_without_a_current_usable_egfr(server, term, obs):
    assert topics(post(server, case(term, obs=obs, drafts=[ZOLEDRONIC]))) == []


# --------------------------------------------------------------------------- 3 vitamin D dose
@pytest.mark.parametrize("draft,level,expected,indicator", [
    (d3(4000), vd(50.1), ["order-vitamin-d-high-dose"], "warning"),
    (d3(3999), vd(80), [], None),                          # below 4,000 IU/day
    (d3(4000), vd(50), [], None),                          # 25(OH)D must be above 50
    (d3(4000), vd(100), ["order-vitamin-d-high-dose"], "warning"),
    (d3(4000), vd(100.1), ["order-vitamin-d-high-dose"], "critical"),
    (d3(4000), vd(125, "nmol/L"), [], None),               # 125 nmol/L is not above 125
    (d3(4000), vd(126, "nmol/L"), ["order-vitamin-d-high-dose"], "warning"),
    (d3(4000), vd(250, "nmol/L"), ["order-vitamin-d-high-dose"], "warning"),
    (d3(4000), vd(251, "nmol/L"), ["order-vitamin-d-high-dose"], "critical"),
    (d3(2000, frequency=2), vd(60), ["order-vitamin-d-high-dose"], "warning"),   # 2 x 2,000 a day
    (d3(50000, period=1, period_unit="wk"), vd(60), ["order-vitamin-d-high-dose"], "warning"),
    (mo.Med("Ergocalciferol 1.25 MG (50,000 unit) oral capsule", 1, "{capsule}", 1, 2, "wk",
            rxnorm="1367410"), vd(60), [], None),           # 50,000 every 2 weeks = 3,571/day
    (mo.Med("Ergocalciferol 50,000 unit capsule", 1, "{capsule}", 1, 1, "wk"), vd(60), [], None),  # strength unknown
    (d3(4000), vd(60, days=400), [], None),                # stale level
])
def test_vitamin_d_dose_against_the_level(server, term, draft, level, expected, indicator):
    cards = post(server, case(term, obs=[level], drafts=[draft]))
    assert topics(cards) == expected
    if expected:
        assert cards[0]["indicator"] == indicator and "IU/day" in cards[0]["summary"]


def test_vitamin_d_duplicate_only_with_an_active_product_on_record(server, term):
    active = d3(1000, status="active")
    cards = post(server, case(term, obs=[vd(28)], on_record=[active], drafts=[d3(2000)]))
    assert topics(cards) == ["order-vitamin-d-duplicate"]
    assert "cholecalciferol" in cards[0]["summary"] and (today() - timedelta(days=120)).isoformat() in cards[0]["summary"]
    stopped = d3(1000, status="stopped")
    assert topics(post(server, case(term, obs=[vd(28)], on_record=[stopped], drafts=[d3(2000)]))) == []


# --------------------------------------------------------------------------- 4 25(OH)D test
@pytest.mark.parametrize("days,expected", [(89, ["order-vitamin-d-retest"]), (90, [])])
def test_vitamin_d_retest_interval(server, term, days, expected):
    body = case(term, age=60, obs=[vd(25, days=days)], conditions=["osteoporosis"], drafts=[VD_TEST])
    assert topics(post(server, body)) == expected


@pytest.mark.parametrize("age,conditions,on_record,expected", [
    (74, [], [], ["order-vitamin-d-test-low-value"]),
    (18, [], [], ["order-vitamin-d-test-low-value"]),
    (75, [], [], []),                                      # ES 2024: empiric vitamin D from 75
    (17, [], [], []),
    (45, ["malabsorption"], [], []),
    (45, ["ckd-stage-4-5"], [], []),
    (45, [], [mo.Med("Prednisone 5 MG Oral Tablet", 1, "{tbl}", rxnorm="312617", status="active")], []),
    (45, [], [mo.Med("Phenytoin 100 MG capsule", 1, "{capsule}", status="active")], []),
])
def test_vitamin_d_test_without_indication(server, term, age, conditions, on_record, expected):
    body = case(term, gender="male", age=age, conditions=conditions, on_record=on_record, drafts=[VD_TEST])
    assert topics(post(server, body)) == expected


def test_low_value_test_needs_a_known_age(server, term):
    body = case(term, gender="male", age=45, drafts=[VD_TEST])
    del body["prefetch"]["patient"]["birthDate"]
    assert topics(post(server, body)) == []


# --------------------------------------------------------------------------- 5 DXA
NORMAL_DXA = [mx.Obs("t-score", -0.8, "{T-score}", 0, site="lumbar-spine")]


def dxa_at(days, t=-0.8):
    return [mx.Obs("t-score", t, "{T-score}", days, site="lumbar-spine"),
            mx.Obs("t-score", t + 0.2, "{T-score}", days, site="total-hip")]


@pytest.mark.parametrize("obs,on_record,expected", [
    (dxa_at(729), [], ["order-dxa-repeat"]),
    (dxa_at(730), [], []),                                 # 2 years: a repeat is due
    (dxa_at(300, t=-2.7), [], []),                         # osteoporosis: monitoring is not low value
    (dxa_at(300, t=-1.5), [], []),                         # low bone mass
    (dxa_at(300), [mo.Med("Alendronate 70 MG tablet", 1, "{tbl}", 1, 1, "wk", status="active")], []),
    (dxa_at(300), [mo.Med("Prednisone 5 MG Oral Tablet", 1, "{tbl}", status="active", rxnorm="312617")], []),
])
def test_dxa_repeat_within_two_years(server, term, obs, on_record, expected):
    body = case(term, age=70, obs=obs, on_record=on_record, drafts=[DXA])
    assert topics(post(server, body)) == expected


@pytest.mark.parametrize("gender,age,obs,conditions,on_record,expected", [
    ("female", 64, [], [], [], ["order-dxa-low-value"]),
    ("female", 50, [], [], [], ["order-dxa-low-value"]),
    ("female", 65, [], [], [], []),                        # USPSTF screening age: not this measure
    ("female", 49, [], [], [], []),
    ("male", 55, [], [], [], []),
    ("female", 55, [mx.Obs("bmi", 20, "kg/m2", 30)], [], [], []),        # BMI <= 20 is a risk factor
    ("female", 55, [mx.Obs("bmi", 20.1, "kg/m2", 30)], [], [], ["order-dxa-low-value"]),
    # CMS249 numerator exclusion: a risk assessment before the order (FRAX >= 8.4 %, OST < 2.0)
    ("female", 55, [mx.Obs("frax-major-osteoporotic", 8.4, "%", 200)], [], [], []),
    ("female", 55, [mx.Obs("frax-major-osteoporotic", 8.3, "%", 200)], [], [], ["order-dxa-low-value"]),
    ("female", 55, [mx.Obs("frax-major-osteoporotic", 12, "%", 3000)], [], [], []),   # 8 years old: stands
    ("female", 55, [mx.Obs("frax-major-osteoporotic", 12, "%", 3700)], [], [], ["order-dxa-low-value"]),
    ("female", 55, [mx.Obs("ost-score", 1.9, "{score}", 30)], [], [], []),
    ("female", 55, [mx.Obs("ost-score", 2, "{score}", 30)], [], [], ["order-dxa-low-value"]),
    ("female", 55, [mx.Obs("ost-score", -1, "1", 30)], [], [], []),
    ("female", 55, [], ["fragility-fracture"], [], []),
    ("female", 55, [], ["low-bone-mass"], [], []),
    ("female", 55, [], [], [mo.Med("Anastrozole 1 MG Oral Tablet", 1, "{tbl}", rxnorm="199224",
                                   status="active")], []),
])
def test_dxa_for_women_50_to_64_without_risk_factor(server, term, gender, age, obs, conditions, on_record,
                                                    expected):
    body = case(term, gender=gender, age=age, obs=obs, conditions=conditions, on_record=on_record, drafts=[DXA])
    cards = post(server, body)
    assert topics(cards) == expected
    if expected:
        assert f"woman of {age}" in cards[0]["summary"]
        assert any(a["type"] == "delete" for s in cards[0]["suggestions"] for a in s["actions"])


# --------------------------------------------------------------------------- 6 bone protection
def pred(mg_text, dose, unit, days=None, rxnorm=None, **kw):
    return mo.Med(mg_text, dose, unit, bounds_days=days, rxnorm=rxnorm, **kw)


@pytest.mark.parametrize("draft,expected", [
    (pred("Prednisone 2.5 MG Oral Tablet", 1, "{tbl}", 91, "198146"), ["order-glucocorticoid-bone-protection"]),
    (pred("Prednisone 2.5 MG Oral Tablet", 1, "{tbl}", 90, "198146"), []),     # > 3 months
    (pred("Prednisone", 2.4, "mg", 120), []),                                  # < 2.5 mg/day
    (pred("Prednisone", 2.5, "mg"), []),                                       # duration unknown
    (pred("Prednisone 5 MG Oral Tablet", 0.5, "{tbl}", 100, "312617"), ["order-glucocorticoid-bone-protection"]),
    (pred("Methylprednisolone 2 MG Oral Tablet", 1, "{tbl}", 100, "197969"),
     ["order-glucocorticoid-bone-protection"]),                               # 2 mg = 2.5 prednisone
    (pred("Dexamethasone", 0.3, "mg", 100), []),                               # 2.0 mg prednisone-eq
    (pred("Hydrocortisone 10 MG Oral Tablet", 1, "{tbl}", 100, "197782"),
     ["order-glucocorticoid-bone-protection"]),                               # 10 hydrocortisone = 2.5
    (pred("Prednisone tablet (strength not stated)", 1, "{tbl}", 100), []),    # no strength: no guess
])
def test_glucocorticoid_dose_and_duration(server, term, draft, expected):
    cards = post(server, case(term, gender="male", age=62, drafts=[draft]))
    assert topics(cards) == expected


def test_glucocorticoid_card_offers_dxa_only_without_a_recent_one(server, term):
    draft = pred("Prednisone 10 MG Oral Tablet", 1, "{tbl}", 182, "198145")
    (card,) = post(server, case(term, gender="male", age=62, drafts=[draft]))
    assert "10 mg/day" in card["summary"] and "182 days" in card["summary"]
    assert [s["label"] for s in card["suggestions"]] == ["Order DXA bone density scan (lumbar spine and hip)"]
    (card,) = post(server, case(term, gender="male", age=62, obs=dxa_at(200), drafts=[draft]))
    assert "suggestions" not in card and "DXA from the last 2 years" in card["detail"]


@pytest.mark.parametrize("draft,finding", [
    (mo.Med("Anastrozole 1 MG Oral Tablet", 1, "{tbl}", rxnorm="199224"), "order-aromatase-inhibitor-bone-health"),
    (mo.Med("Letrozole 2.5 MG tablet", 1, "{tbl}"), "order-aromatase-inhibitor-bone-health"),
    (mo.Med("Leuprolide acetate 22.5 MG depot", 22.5, "mg", 1, 3, "mo"), "order-adt-bone-health"),
    (mo.Med("Degarelix 80 MG Injection", 80, "mg", 1, 1, "mo", rxnorm="828749"), "order-adt-bone-health"),
])
def test_aromatase_inhibitor_and_adt_need_a_baseline_dxa(server, term, draft, finding):
    gender = "male" if "adt" in finding else "female"
    assert topics(post(server, case(term, gender=gender, age=66, drafts=[draft]))) == [finding]
    assert topics(post(server, case(term, gender=gender, age=66, obs=dxa_at(400), drafts=[draft]))) == []
    assert topics(post(server, case(term, gender=gender, age=66, drafts=[draft, DXA]))) == []


# --------------------------------------------------------------------------- select vs sign
def test_order_select_checks_only_the_selected_orders(server, term):
    drafts = [ALENDRONATE, DXA]
    obs = [egfr(70)]
    sign = post(server, case(term, gender="female", age=55, obs=obs, drafts=drafts))
    assert sorted(topics(sign)) == ["order-antiresorptive-no-vitamin-d", "order-dxa-low-value"]
    only_dxa = case(term, gender="female", age=55, obs=obs, drafts=drafts, hook="order-select", selected=[1])
    assert topics(post(server, only_dxa)) == ["order-dxa-low-value"]
    only_alendronate = case(term, gender="female", age=55, obs=obs, drafts=drafts, hook="order-select",
                            selected=[0])
    assert topics(post(server, only_alendronate)) == ["order-antiresorptive-no-vitamin-d"]


def test_a_draft_also_returned_as_on_record_is_not_a_second_product(server, term):
    body = case(term, obs=[vd(28)], drafts=[d3(2000, status="active")])
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    body["prefetch"]["medications"] = {"resourceType": "Bundle", "type": "searchset",
                                       "entry": [{"resource": copy.deepcopy(draft)}]}
    assert topics(post(server, body)) == []


def test_an_unreadable_draft_gets_no_card(server, term):
    body = case(term, obs=[vd(12), egfr(70)], drafts=[ALENDRONATE])
    body["context"]["draftOrders"]["entry"][0]["resource"]["authoredOn"] = "yesterday"   # not R4
    assert topics(post(server, body)) == []


# --------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("mutate,expr", [
    (lambda b: b["context"].update(selections=["MedicationRequest/nope"]), "context.selections[0]"),
    (lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(resourceType="MedicationOrder"),
     "context.draftOrders.entry[0].resource.resourceType"),
    (lambda b: b["context"].update(draftOrders={"resourceType": "List"}), "context.draftOrders.resourceType"),
    (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
])
def test_bad_order_contexts_are_400_naming_the_field(server, term, mutate, expr):
    body = case(term, obs=[vd(12), egfr(70)], drafts=[ALENDRONATE], hook="order-select")
    mutate(body)
    r = requests.post(server.url(SELECT), json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [expr] in [i.get("expression") for i in outcome["issue"]]


def test_the_wrong_hook_for_a_service(server, term):
    body = case(term, drafts=[ALENDRONATE])   # order-sign
    r = requests.post(server.url(SELECT), json=body, timeout=30)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["hook"]


# --------------------------------------------------------------------------- the spec's contexts
def spec(shared_dir, name):
    return json.loads((shared_dir / "cds-hooks-spec" / "library-v1.0.1" / name).read_text())["context"]


@pytest.mark.parametrize("name,hook", [("order-select-context-r4.json", "order-select"),
                                       ("order-sign-context-r4.json", "order-sign"),
                                       ("order-select-context-stu3.json", "order-select"),
                                       ("order-sign-context-stu3.json", "order-sign")])
def test_library_contexts(server, shared_dir, name, hook):
    context = spec(shared_dir, name)
    path = SELECT if hook == "order-select" else SIGN
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    r = requests.post(server.url(path), json=body, timeout=30)
    assert r.status_code == 412, r.text                    # no prefetch and no fhirServer: data missing
    assert r.json()["resourceType"] == "OperationOutcome"
    patient = {"resourceType": "Patient", "id": context["patientId"], "gender": "female", "birthDate": "1950-01-01"}
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    body["prefetch"] = {"patient": patient, "observations": empty, "conditions": empty, "medications": empty}
    r = requests.post(server.url(path), json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"cards": []}                       # amoxicillin and a diet: nothing to check


@pytest.mark.parametrize("name,hook", [("order-select-context-dstu2.json", "order-select"),
                                       ("order-sign-context-dstu2.json", "order-sign")])
def test_library_dstu2_contexts_are_400(server, shared_dir, name, hook):
    body = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": spec(shared_dir, name)}
    r = requests.post(server.url(SELECT if hook == "order-select" else SIGN), json=body, timeout=30)
    assert r.status_code == 400
    assert any("MedicationOrder" in i["diagnostics"] for i in r.json()["issue"])


# --------------------------------------------------------------------------- FHIR-server fallback
def test_fallback_fetches_the_record_from_the_fhir_server(server, term, fhir):
    fhir.reset()
    body = case(term, obs=[vd(35), egfr(28)], drafts=[ZOLEDRONIC])
    prefetch = body.pop("prefetch")
    fhir.load(prefetch["patient"], *[e["resource"] for k in ("observations", "conditions", "medications")
                                     for e in prefetch[k].get("entry", [])])
    body["fhirServer"] = fhir.base_url
    cards = post(server, body)
    assert topics(cards) == ["order-antiresorptive-kidney"] and cards[0]["indicator"] == "critical"
    asked = {r.resource_type for r in fhir.asked()}
    assert {"Patient", "Observation", "Condition", "MedicationRequest"} <= asked
    fhir.reset()


# --------------------------------------------------------------------------- feedback on order cards
def test_feedback_on_order_cards(server, term):
    body = case(term, obs=[vd(35), egfr(30)], drafts=[ALENDRONATE])
    (card,) = post(server, body)
    delete = next(s for s in card["suggestions"] if s["actions"][0]["type"] == "delete")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {"feedback": [{"card": card["uuid"], "outcome": "accepted",
                              "acceptedSuggestions": [{"id": delete["uuid"]}], "outcomeTimestamp": now}]}
    # the issued-card record is written off the request path (a queue): wait for it, up to 10 s
    deadline = time.monotonic() + 10
    while True:
        r = requests.post(server.url(SIGN + "/feedback"), json=accepted, timeout=10)
        if r.status_code == 200 or "is not a card this service issued" not in r.text \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    overridden = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                                "overrideReason": {"reason": card["overrideReasons"][0],
                                                   "userComment": "eGFR repeated today: 41"}}]}
    r = requests.post(server.url(SIGN + "/feedback"), json=overridden, timeout=10)
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    # the card was issued by the order-sign service: feedback sent to another service is refused
    r = requests.post(server.url("/cds-services/bone-muscle-health/feedback"), json=accepted, timeout=10)
    assert r.status_code == 400 and "bone-health-order-sign" in r.text


# --------------------------------------------------------------------------- rule pages
@pytest.mark.parametrize("finding,shown", [("order-antiresorptive-kidney", "&lt; 35"),
                                           ("order-vitamin-d-high-dose", "4000 IU/day"),
                                           ("order-glucocorticoid-bone-protection", "2.5 mg/day")])
def test_every_order_check_has_its_rule_page(server, finding, shown):
    r = requests.get(server.url(f"/rules/{finding}"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert shown in r.text or shown.replace("&lt;", "<") in r.text
