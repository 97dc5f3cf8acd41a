"""Prefetch and FHIR-server fallback (placeholder: issue 2 replaces this module)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .config import Config


@dataclass
class Gathered:
    by_key: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def resources(self) -> list[dict[str, Any]]:
        return [r for items in self.by_key.values() for r in items]


def gather(templates: Mapping[str, str], request: Mapping[str, Any], *, config: Config,
           session: Any = None) -> Gathered:
    out = Gathered()
    for key, value in (request.get("prefetch") or {}).items():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            out.by_key[key] = [e["resource"] for e in value.get("entry", []) if "resource" in e]
        elif isinstance(value, dict):
            out.by_key[key] = [value]
    return out
