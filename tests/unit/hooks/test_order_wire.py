"""order-select / order-sign contexts: the spec's own examples load; every malformed draftOrders
Bundle or selection is a 400 whose issue names the field."""
from __future__ import annotations

import copy
import json

import pytest

from cds.errors import BadRequest
from cds.hooks import wire

INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def spec_context(shared_dir, name):
    return json.loads((shared_dir / "cds-hooks-spec" / "library-v1.0.1" / name).read_text())["context"]


def request(hook, context):
    return {"hook": hook, "hookInstance": INSTANCE, "context": context}


def issues(hook, context):
    with pytest.raises(BadRequest) as exc:
        wire.load_hook_request(request(hook, context), hook)
    return [(i.expression, i.diagnostics) for i in exc.value.issues]


@pytest.mark.parametrize("hook,name", [("order-select", "order-select-context-r4.json"),
                                       ("order-sign", "order-sign-context-r4.json"),
                                       ("order-select", "order-select-context-stu3.json"),
                                       ("order-sign", "order-sign-context-stu3.json")])
def test_the_library_examples_load(shared_dir, hook, name):
    context = spec_context(shared_dir, name)
    loaded = wire.load_hook_request(request(hook, context), hook)
    assert loaded["context"]["draftOrders"]["resourceType"] == "Bundle"
    if hook == "order-select":
        assert loaded["context"]["selections"] == context["selections"]


@pytest.mark.parametrize("hook,name", [("order-select", "order-select-context-dstu2.json"),
                                       ("order-sign", "order-sign-context-dstu2.json")])
def test_dstu2_medication_order_is_not_an_r4_order_type(shared_dir, hook, name):
    found = issues(hook, spec_context(shared_dir, name))
    assert any(expr == "context.draftOrders.entry[1].resource.resourceType" and "'MedicationOrder'" in text
               and hook in text for expr, text in found), found


def base(shared_dir, hook="order-select"):
    return copy.deepcopy(spec_context(shared_dir, f"{hook}-context-r4.json"))


def test_a_selection_that_names_no_draft_order(shared_dir):
    ctx = base(shared_dir)
    ctx["selections"] = ["MedicationRequest/smart-MedicationRequest-103", "MedicationRequest/nope"]
    assert issues("order-select", ctx) == [
        ("context.selections[1]", "context.selections[1]: 'MedicationRequest/nope' names no order in draftOrders")]


@pytest.mark.parametrize("selections,expr", [
    ([], "context.selections"), ("MedicationRequest/1", "context.selections"),
    (["smart-MedicationRequest-103"], "context.selections[0]"), ([7], "context.selections[0]")])
def test_malformed_selections(shared_dir, selections, expr):
    ctx = base(shared_dir)
    ctx["selections"] = selections
    assert any(e == expr for e, _ in issues("order-select", ctx))


def test_selections_are_required_for_order_select_only(shared_dir):
    ctx = base(shared_dir)
    del ctx["selections"]
    assert any(e == "context.selections" for e, _ in issues("order-select", ctx))
    wire.load_hook_request(request("order-sign", base(shared_dir, "order-sign")), "order-sign")


@pytest.mark.parametrize("mutate,expr,text", [
    (lambda c: c.pop("draftOrders"), "context.draftOrders", "Missing data"),
    (lambda c: c.update(draftOrders=[]), "context.draftOrders", "must be a FHIR Bundle"),
    (lambda c: c["draftOrders"].update(resourceType="Parameters"), "context.draftOrders.resourceType", "'Bundle'"),
    (lambda c: c["draftOrders"].update(entry={"resource": {}}), "context.draftOrders.entry", "list"),
    (lambda c: c["draftOrders"]["entry"].append({"fullUrl": "urn:x"}), "context.draftOrders.entry[2].resource",
     "is required"),
    (lambda c: c["draftOrders"]["entry"][0]["resource"].update(resourceType="Observation"),
     "context.draftOrders.entry[0].resource.resourceType", "not an order type"),
    (lambda c: c["draftOrders"]["entry"][1]["resource"].update(id="a b"),
     "context.draftOrders.entry[1].resource.id", "FHIR id"),
    (lambda c: c["draftOrders"]["entry"].append(copy.deepcopy(c["draftOrders"]["entry"][1])),
     "context.draftOrders.entry[2].resource.id", "appears twice"),
    (lambda c: c["draftOrders"]["entry"][1]["resource"].update(subject={"reference": "Patient/other"}),
     "context.draftOrders.entry[1].resource.subject", "another patient"),
    (lambda c: c["draftOrders"]["entry"][0]["resource"].update(patient={"reference": "Patient/other"}),
     "context.draftOrders.entry[0].resource.patient", "another patient"),
    (lambda c: c.update(userId="Patient/1288992"), "context.userId", "Practitioner"),
    (lambda c: c["draftOrders"].update(entry=[{"resource": {"resourceType": "ServiceRequest", "id": str(i)}}
                                               for i in range(201)]), "context.draftOrders.entry", "more than 200"),
])
def test_malformed_draft_orders_name_the_field(shared_dir, mutate, expr, text):
    ctx = base(shared_dir, "order-sign")
    mutate(ctx)
    found = issues("order-sign", ctx)
    assert any(e == expr and text in t for e, t in found), found


def test_absolute_subject_reference_to_the_same_patient_is_fine(shared_dir):
    ctx = base(shared_dir, "order-sign")
    ctx["draftOrders"]["entry"][1]["resource"]["subject"] = {
        "reference": "https://ehr.example.org/fhir/Patient/1288992/_history/3"}
    wire.load_hook_request(request("order-sign", ctx), "order-sign")


def test_a_bad_bundle_and_a_bad_field_are_reported_together(shared_dir):
    ctx = base(shared_dir)
    ctx["patientId"] = "Patient/1288992"
    ctx["draftOrders"]["entry"][0]["resource"]["resourceType"] = "Task"
    exprs = [e for e, _ in issues("order-select", ctx)]
    assert "context.patientId" in exprs and "context.draftOrders.entry[0].resource.resourceType" in exprs


def test_a_patient_view_service_refuses_an_order_hook(shared_dir):
    with pytest.raises(BadRequest) as exc:
        wire.load_hook_request(request("order-sign", base(shared_dir, "order-sign")), "patient-view")
    assert exc.value.issues[0].expression == "hook"
