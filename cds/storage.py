"""Issued cards and feedback storage (placeholder: issue 5 replaces this module)."""
from __future__ import annotations

from typing import Any

from .config import Config
from . import wire


class MemoryStore:
    def __init__(self) -> None:
        self.issued: dict[str, dict[str, Any]] = {}
        self.feedback: list[dict[str, Any]] = []

    def record_issued(self, service_id: str, hook: str, hook_instance: str,
                      cards: list[dict[str, Any]]) -> None:
        for card in cards:
            self.issued[card["uuid"]] = {"service": service_id, "hook": hook}

    def record_feedback(self, service_id: str, payload: Any) -> int:
        items = wire.load_feedback(payload)
        self.feedback.extend(items)
        return len(items)

    def summary(self, start: str | None, end: str | None) -> dict[str, Any]:
        return {}


def open_store(config: Config) -> MemoryStore:
    return MemoryStore()
