"""FHIR resources → PatientFacts (placeholder: issue 3 replaces this module)."""
from __future__ import annotations

from datetime import date
from typing import Any, Iterable, Mapping

from .facts import PatientFacts


def normalize(resources: Iterable[Mapping[str, Any]], patient_id: str, rules: Any,
              as_of: date) -> PatientFacts:
    return PatientFacts(patient_id=patient_id, as_of=as_of)
