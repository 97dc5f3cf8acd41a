"""PatientFacts + rules → findings (placeholder: issue 3 replaces this module)."""
from __future__ import annotations

from typing import Any

from .facts import Finding, PatientFacts


def evaluate(facts: PatientFacts, rules: Any) -> list[Finding]:
    return []
