"""A rules/ copy that breaks the code↔YAML contract (a renamed kind, a card placeholder no
finding provides) stops the real start-up paths: the gunicorn server never becomes healthy,
and ``mskcds evaluate`` exits non-zero; both name the file, the field and the name, without
a traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLES, REPO, ServerProcess

RULES = REPO / "rules"


def broken_copy(tmp_path: Path, how: str) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    if how == "renamed-kind":
        for path in target.glob("*.yaml"):
            path.write_text(path.read_text(encoding="utf-8").replace(
                "grip-strength", "handgrip-strength"), encoding="utf-8")
    else:
        path = target / "cards.yaml"
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["findings"]["osteoporosis"]["detail"] += " Grip: {grip}."
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return target


EXPECTED = {"renamed-kind": ["valuesets.yaml", "no kind 'grip-strength'", "'handgrip-strength'"],
            "unknown-placeholder": ["cards.yaml", "findings.osteoporosis.detail", "{grip}"]}


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_server_does_not_start(tmp_path, how):
    rules = broken_copy(tmp_path, how)
    server = ServerProcess({"MSKCDS_RULES_DIR": str(rules), "MSKCDS_REQUIRE_AUTH": "false",
                            "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
                           workers=1, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError) as err:
        server.start(timeout=60)
    server.stop()
    log = server.log_text()
    assert "server exited" in str(err.value)
    for word in EXPECTED[how]:
        assert word in log, log
    assert "Traceback" not in log


@pytest.mark.parametrize("how", sorted(EXPECTED))
def test_cli_evaluate_stops(tmp_path, how):
    rules = broken_copy(tmp_path, how)
    proc = subprocess.run([sys.executable, "-m", "cds.cli", "evaluate",
                           str(EXAMPLES / "sarcopenia-confirmed.request.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"MSKCDS_RULES_DIR": str(rules), "PATH": "/usr/bin:/bin",
                               "MSKCDS_REQUIRE_AUTH": "false"})
    assert proc.returncode != 0 and proc.stdout == ""
    for word in EXPECTED[how]:
        assert word in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
