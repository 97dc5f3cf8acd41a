"""``mskcds evaluate`` prints exactly what the HTTP endpoint returns for the same input.

Each example request in fhir_examples/ is evaluated by the CLI and sent to a real
server process; the two JSON documents must be equal once card and suggestion uuids
(random per answer) are set aside. The FHIR Bundle form (``--hook patient-view``)
must give the same answer as the request form of the same example.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from cds.cli.main import main
from conftest import EXAMPLES, REPO, load_json

pytestmark = pytest.mark.slow

SERVICE = "/cds-services/bone-muscle-health"
REQUESTS = sorted(EXAMPLES.glob("*.request.json"))


def without_uuids(body: Any) -> Any:
    body = copy.deepcopy(body)
    for card in body.get("cards", []) if isinstance(body, dict) else []:
        assert card.pop("uuid", None), "every card carries a uuid"
        for suggestion in card.get("suggestions", []):
            sid = suggestion.pop("uuid", None)
            assert sid, "every suggestion carries a uuid"
            for action in suggestion["actions"]:   # a created resource's id is its suggestion's uuid
                if action["type"] == "create":
                    assert action["resource"].pop("id") == sid
    return body


def run_cli(capsys, *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["evaluate", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_there_are_examples_to_compare():
    assert len(REQUESTS) >= 5, "fhir_examples/*.request.json missing"


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name.split(".")[0])
def test_cli_prints_what_the_endpoint_returns(open_server, capsys, path):
    code, printed = run_cli(capsys, str(path))
    r = requests.post(open_server.url(SERVICE), json=load_json(path), timeout=15)
    assert (code == 0) == (r.status_code == 200), (code, r.status_code, r.text)
    assert without_uuids(printed) == without_uuids(r.json())


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name.split(".")[0])
def test_bundle_form_gives_the_same_answer(open_server, capsys, path):
    bundle = path.with_name(path.name.replace(".request.json", ".bundle.json"))
    assert bundle.exists(), bundle
    code, printed = run_cli(capsys, str(bundle), "--hook", "patient-view")
    r = requests.post(open_server.url(SERVICE), json=load_json(path), timeout=15)
    assert code == 0 and r.status_code == 200, r.text
    assert without_uuids(printed) == without_uuids(r.json())


def test_some_example_produces_cards(open_server):
    counts = [len(requests.post(open_server.url(SERVICE), json=load_json(p), timeout=15).json()["cards"])
              for p in REQUESTS]
    assert any(counts), "no example produced a card: the comparison would be vacuous"


def test_bad_request_prints_the_same_operation_outcome(open_server, capsys, tmp_path):
    body = load_json(REQUESTS[0])
    body["context"]["patientId"] = "Patient/with-prefix"
    body["hook"] = "patient-view"
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(body))
    code, printed = run_cli(capsys, str(f))
    r = requests.post(open_server.url(SERVICE), json=body, timeout=15)
    assert r.status_code == 400 and code == 1
    assert printed == r.json()
    assert "context.patientId" in {e for i in printed["issue"] for e in i.get("expression", [])}


def test_missing_data_prints_the_same_412(open_server, capsys, tmp_path):
    body = load_json(REQUESTS[0])
    del body["prefetch"]["patient"]
    f = tmp_path / "missing.json"
    f.write_text(json.dumps(body))
    code, printed = run_cli(capsys, str(f))
    r = requests.post(open_server.url(SERVICE), json=body, timeout=15)
    assert r.status_code == 412 and code == 1
    assert printed == r.json()


def test_bundle_without_hook_and_unreadable_file_exit_2(capsys, tmp_path):
    bundle = sorted(EXAMPLES.glob("*.bundle.json"))[0]
    assert main(["evaluate", str(bundle)]) == 2
    assert "--hook" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope.json")]) == 2
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["evaluate", str(tmp_path / "broken.json")]) == 2


def test_console_script_runs(tmp_path):
    """The installed entry point, as a user runs it (one process start only)."""
    exe = Path(sys.executable).with_name("mskcds")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cds.cli.main"]
    env = {**os.environ, "MSKCDS_REQUIRE_AUTH": "false",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}"}
    proc = subprocess.run([*cmd, "evaluate", str(REQUESTS[0]), "--pretty"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "cards" in json.loads(proc.stdout)
