"""Findings → CDS Hooks cards (placeholder: issue 3 replaces this module)."""
from __future__ import annotations

from typing import Any

from .facts import Finding, PatientFacts


def build_cards(findings: list[Finding], facts: PatientFacts, rules: Any) -> list[dict[str, Any]]:
    return []
