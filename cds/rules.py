"""Clinical knowledge loaded from rules/ once at start-up (issue 3 completes this module).

``load_yaml`` is the one way a rules file is read: parsed with PyYAML's safe
loader and validated with a marshmallow schema; any problem stops start-up with
a RulesError naming the file and the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from marshmallow import Schema, ValidationError

from .config import Config
from .wire import flatten_errors


class RulesError(ValueError):
    """A rules file is malformed or inconsistent; the message names the file and field."""

    def __init__(self, path: Path | str, problems: list[str] | str):
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


def load_yaml(path: Path, schema: Schema | None = None) -> Any:
    """Read one rules file; validate it with ``schema`` (marshmallow) when given."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(path, f"not valid YAML: {exc}") from None
    if schema is None:
        return data
    if not isinstance(data, dict):
        raise RulesError(path, "top level must be a mapping")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise RulesError(path, [i.diagnostics for i in flatten_errors(exc.messages)]) from None


@dataclass
class Rules:
    source_dir: Path

    def prefetch_templates(self) -> dict[str, str]:
        return {"patient": "Patient/{{context.patientId}}"}


def load_rules(config: Config) -> Rules:
    return Rules(source_dir=Path(config.rules_dir))
