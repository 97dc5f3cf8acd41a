"""Copies of rules/ for tests that break or extend the terminology files on purpose."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"
CATEGORIES = Path(__file__).parent / "unit" / "knowledge" / "data" / "valuesets-categories.yaml"
FILES = ("valuesets.yaml", "units.yaml", "data_quality.yaml")


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def rules_copy(tmp_path: Path, with_categories: bool = True) -> Path:
    """rules/{valuesets,units,data_quality}.yaml copied to tmp (plus the test categories)."""
    out = tmp_path / "rules"
    out.mkdir()
    for name in FILES:
        shutil.copy(RULES / name, out / name)
    if with_categories:
        vs = _load((out / "valuesets.yaml").read_text())
        vs.update(_load(CATEGORIES.read_text()))
        (out / "valuesets.yaml").write_text(_dump(vs))
    return out


def copy_all_rules(tmp_path: Path) -> Path:
    """Every file of rules/ copied to tmp (for tests that break or change one on purpose)."""
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def edit_yaml(path: Path, change: Any) -> None:
    """Load a rules file, let ``change`` edit the data in place, write it back."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
