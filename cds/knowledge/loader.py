"""Reading one rules file: YAML (safe loader) validated by a marshmallow schema whose
``post_load`` hooks build frozen dataclasses, so a file is held one way only.

Any problem raises ``RulesError`` naming the file and the field (e.g.
``bone.yaml: t_score.osteoporosis: empty range ...``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, validate

from cds.config import ConfigError
from cds.errors import flatten_errors

#: libyaml's safe loader when PyYAML was built with it (about 10x faster start-up), else Python's.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: ``{name}`` placeholders in card text and suggestion templates.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: lower-case names (kinds, categories, orderables, citation ids).
NAME = validate.Regexp(r"^[a-z0-9][a-z0-9\-]*$", error="must be a lower-case name (a-z, 0-9, -)")


class RulesError(ValueError):
    """A rules file is malformed or inconsistent; the message names the file and field."""

    def __init__(self, path: Path | str, problems: list[str] | str):
        self.path = str(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(f"{self.path}: " + "; ".join(self.problems))


class UnknownProfileError(RulesError, ConfigError):
    """MSKCDS_*_PROFILE names a profile the rules file does not define (a setting error too)."""


class Strict(Schema):
    """Unknown keys are errors: a typo in a rules file never passes silently."""

    class Meta:
        unknown = RAISE


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def load_yaml(path: Path, schema: Schema | None = None) -> Any:
    """Read one rules file; validate it with ``schema`` (marshmallow) when given."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
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


def load_file(path: Path, schema: Schema) -> Any:
    """load_yaml, with marshmallow's dict-value markers taken out of field paths
    ("profiles.x.value.bands.0.below" → "profiles.x.bands[0].below")."""
    try:
        return load_yaml(path, schema)
    except RulesError as exc:
        raise RulesError(exc.path, [_tidy(p) for p in exc.problems]) from None


def _tidy(problem: str) -> str:
    head, sep, rest = problem.partition(": ")
    head = head.replace(".value.", ".").replace(".key", " (name)")
    head = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", head)
    return head + sep + rest
