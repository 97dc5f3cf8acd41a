"""A FHIR Bundle as a CDS Hooks request (for `mskcds evaluate`/`preview` and POST /preview)."""
from __future__ import annotations

import uuid
from typing import Any, Mapping


def request_from_bundle(bundle: Mapping[str, Any], hook: str,
                        templates: Mapping[str, str]) -> dict[str, Any]:
    """Wrap a FHIR Bundle as a CDS Hooks request: the Patient and every other resource as
    prefetch. ValueError when the Bundle does not hold exactly one Patient with an id."""
    entries = bundle.get("entry")
    resources: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            resources.append(resource)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    patient_id = patients[0].get("id") if len(patients) == 1 else None
    if not isinstance(patient_id, str) or not patient_id:
        raise ValueError("the Bundle must hold exactly one Patient with an id")
    others = [r for r in resources if r.get("resourceType") != "Patient"]
    prefetch: dict[str, Any] = {"patient": patients[0]}
    # Everything else goes in one searchset per remaining template key, by resource type.
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in others:
        by_type.setdefault(str(r.get("resourceType")), []).append(r)
    for key, template in templates.items():
        if key == "patient":
            continue
        rtype = template.split("?", 1)[0].split("/", 1)[0]
        items = by_type.get(rtype, [])
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                         "entry": [{"resource": r} for r in items]} if items else None
    return {"hook": hook, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/mskcds-cli", "patientId": patient_id},
            "prefetch": prefetch}
