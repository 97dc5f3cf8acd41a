"""Clinical knowledge loaded from rules/ (placeholder: issue 3 replaces this module)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config


class RulesError(ValueError):
    """A rules file is malformed or inconsistent; the message names the file and field."""


@dataclass
class Rules:
    source_dir: Path

    def prefetch_templates(self) -> dict[str, str]:
        return {"patient": "Patient/{{context.patientId}}"}


def load_rules(config: Config) -> Rules:
    return Rules(source_dir=Path(config.rules_dir))
