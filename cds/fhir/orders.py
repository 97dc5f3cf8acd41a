"""context.draftOrders → ``DraftOrder`` facts, kept apart from what is on record.

The wire schema has already checked the Bundle's shape (allowed order types, ids, the
patient). Here each MedicationRequest and ServiceRequest is matched:

* medications: to the categories of rules/valuesets.yaml (the same matcher as on-record
  medications) and to a drug of rules/orders.yaml ``drugs`` (a listed code or strength code,
  else the longest drug name found in the order's text or coding displays);
* tests: ServiceRequest.code to rules/orders.yaml ``services``;

its dosage plan is read (cds.fhir.dosage), and the elements read are validated with
fhir.resources R4B. An order that is not valid R4 in what is read, or whose status says it is
withdrawn, is not checked (``excluded`` says why, with no patient data). NutritionOrder and
VisionPrescription are accepted on the wire but never checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Mapping

from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest as FhirServiceRequest

from cds.clinical.drafts import DraftOrder
from cds.fhir.dosage import read_plan
from cds.fhir.normalize import (concept_keys, medication_concept, medication_hits, r4_problem,
                                which_drug)

_MEDICATION_ELEMENTS = ("resourceType", "id", "status", "intent", "subject", "medicationCodeableConcept",
                        "medicationReference", "authoredOn", "dosageInstruction", "dispenseRequest")
_SERVICE_ELEMENTS = ("resourceType", "id", "status", "intent", "subject", "code", "authoredOn")


@dataclass
class Drafts:
    orders: list[DraftOrder] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)   # reasons, no patient data

    def to_check(self) -> list[DraftOrder]:
        return [o for o in self.orders if o.checked]


def _codings(concept: Any) -> list[Mapping[str, Any]]:
    if not isinstance(concept, Mapping) or not isinstance(concept.get("coding"), list):
        return []
    return [c for c in concept["coding"] if isinstance(c, Mapping)]


def _display(concept: Any) -> str:
    if isinstance(concept, Mapping) and isinstance(concept.get("text"), str) and concept["text"].strip():
        return concept["text"].strip()[:120]
    for c in _codings(concept):
        if isinstance(c.get("display"), str) and c["display"].strip():
            return c["display"].strip()[:120]
    return ""


def read_drafts(bundle: Mapping[str, Any], selections: Collection[str] | None, rules: Any) -> Drafts:
    """Every draft order of a validated draftOrders Bundle; ``selections`` None means order-sign
    (every order is checked), else only the selected ``Type/id`` are."""
    from cds.fhir.normalize import terminology_of

    term = terminology_of(rules)
    orders = rules.orders
    entries = [e.get("resource") for e in bundle.get("entry", []) or [] if isinstance(e, Mapping)]
    resources = [r for r in entries if isinstance(r, Mapping)]
    medications = {f"Medication/{r.get('id')}": r for r in resources
                   if r.get("resourceType") == "Medication" and r.get("id")}
    out = Drafts()
    for res in resources:
        rtype = res.get("resourceType")
        if rtype not in ("MedicationRequest", "ServiceRequest"):
            continue
        rid = res.get("id") if isinstance(res.get("id"), str) else None
        ref = f"{rtype}/{rid}" if rid else None
        checked = selections is None or (ref is not None and ref in selections)
        status = res.get("status") if isinstance(res.get("status"), str) else None
        if status in orders.status_ignored:
            out.excluded.append(f"{rtype}: status {status!r} is not an order to check")
            continue
        if rtype == "MedicationRequest":
            problem = r4_problem(FhirMedicationRequest, res, _MEDICATION_ELEMENTS)
            if problem:
                out.excluded.append(f"{rtype}: {problem}")
                continue
            concept = medication_concept(res, medications)
            keys = concept_keys(concept)
            out.orders.append(DraftOrder(
                ref=ref, resource_type=rtype, resource_id=rid, checked=checked,
                display=_display(concept) or "the medication ordered",
                categories=frozenset(medication_hits(concept, term)), drug=which_drug(concept, keys, orders),
                codes=keys, plan=read_plan(res, orders.dose_units, orders.time_units), status=status))
        else:
            problem = r4_problem(FhirServiceRequest, res, _SERVICE_ELEMENTS)
            if problem:
                out.excluded.append(f"{rtype}: {problem}")
                continue
            keys = concept_keys(res.get("code"))
            services = frozenset(name for name, codes in orders.services.items() if codes & set(keys))
            out.orders.append(DraftOrder(
                ref=ref, resource_type=rtype, resource_id=rid, checked=checked,
                display=_display(res.get("code")) or "the test ordered", services=services,
                codes=keys, status=status))
    return out
