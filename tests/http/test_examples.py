"""fhir_examples/: every example, through the CLI and through a real server over HTTP, produces
exactly its finding's card (the healthy patient: none). The committed files are what the
generator makes, and every Bundle and prefetch resource is valid FHIR R4 (R4B models).

The examples are dated relative to an anchor day (examples.json "as_of"); the service uses the
real date, so once the anchor is more than 300 days old the examples are regenerated into a
temporary folder with today's anchor (the committed ones are still checked for consistency)."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import requests

from cds.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "fhir_examples"
MANIFEST = json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))
NAMES = sorted(MANIFEST["examples"])
sys.path.insert(0, str(EXAMPLES))
import make_examples  # noqa: E402


def today() -> date:
    return datetime.now(timezone.utc).date()


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory) -> Path:
    anchor = date.fromisoformat(MANIFEST["as_of"])
    if 0 <= (today() - anchor).days <= 300:
        return EXAMPLES
    out = tmp_path_factory.mktemp("examples")
    make_examples.write_all(out, today())
    return out


def topics(response: dict) -> list[str]:
    return [c["source"]["topic"]["code"] for c in response["cards"]]


def profile(name: str) -> str | None:
    """The vitamin D profile an example needs (examples.json "profile"; None: the default)."""
    return MANIFEST["examples"][name].get("profile")


def expected(name: str) -> list[str]:
    finding = MANIFEST["examples"][name]["finding"]
    return [finding] if finding else []


def test_every_finding_has_an_example_and_a_healthy_one():
    from cds.knowledge.vocabulary import PATIENT_VIEW_FINDINGS   # order findings: fhir_examples/orders/

    findings = {v["finding"] for v in MANIFEST["examples"].values()}
    assert findings == set(PATIENT_VIEW_FINDINGS) | {None}
    for name in NAMES:
        assert (EXAMPLES / f"{name}.request.json").is_file()
        assert (EXAMPLES / f"{name}.bundle.json").is_file()


def test_committed_files_are_what_the_generator_makes(tmp_path):
    make_examples.write_all(tmp_path, date.fromisoformat(MANIFEST["as_of"]))
    for path in sorted(tmp_path.iterdir()):
        assert path.read_text() == (EXAMPLES / path.name).read_text(), path.name


@pytest.mark.parametrize("name", NAMES)
def test_files_are_valid_fhir_r4(name):
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.patient import Patient

    Bundle.model_validate(json.loads((EXAMPLES / f"{name}.bundle.json").read_text()))
    request = json.loads((EXAMPLES / f"{name}.request.json").read_text())
    for key, value in request["prefetch"].items():
        (Patient if key == "patient" else Bundle).model_validate(value)


def test_prefetch_keys_are_the_discovery_keys():
    from cds.config import Config
    from cds.engine import Engine

    keys = set(Engine(Config()).services["bone-muscle-health"].prefetch)
    for name in NAMES:
        request = json.loads((EXAMPLES / f"{name}.request.json").read_text())
        assert set(request["prefetch"]) == keys, name


@pytest.mark.parametrize("name", NAMES)
def test_cli_evaluate_request_and_bundle(name, example_dir, capsys, monkeypatch):
    monkeypatch.setenv("MSKCDS_REQUIRE_AUTH", "false")
    if profile(name):
        monkeypatch.setenv("MSKCDS_VITAMIN_D_PROFILE", profile(name))
    for args in ([str(example_dir / f"{name}.request.json")],
                 [str(example_dir / f"{name}.bundle.json"), "--hook", "patient-view"]):
        assert cli.main(["evaluate", *args]) == 0
        out = json.loads(capsys.readouterr().out)
        assert topics(out) == expected(name), (name, args)


def test_installed_mskcds_command(example_dir):
    """The real console script, in its own process (one example; the rest run in-process)."""
    exe = Path(sys.executable).with_name("mskcds")
    proc = subprocess.run([str(exe), "evaluate", str(example_dir / "osteosarcopenia.request.json")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert topics(json.loads(proc.stdout)) == ["osteosarcopenia"]


@pytest.fixture(scope="module")
def server_2011(tmp_path_factory):
    """The Endocrine Society 2011 profile (still selectable) for the examples that need it."""
    from conftest import run_server

    with run_server({"MSKCDS_REQUIRE_AUTH": "false",
                     "MSKCDS_VITAMIN_D_PROFILE": "endocrine-society-2011"},
                    tmp_path_factory.mktemp("server-2011")) as server:
        yield server


@pytest.mark.parametrize("name", NAMES)
def test_real_server_over_http(open_server, server_2011, example_dir, name):
    body = json.loads((example_dir / f"{name}.request.json").read_text())
    server = server_2011 if profile(name) == "endocrine-society-2011" else open_server
    r = requests.post(server.url("/cds-services/bone-muscle-health"), json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert topics(r.json()) == expected(name)


def test_kidney_failure_example_over_http_has_no_dosing(open_server, example_dir):
    body = json.loads((example_dir / "vitamin-d-deficiency-kidney-failure.request.json").read_text())
    r = requests.post(open_server.url("/cds-services/bone-muscle-health"), json=body, timeout=30)
    (card,) = r.json()["cards"]
    assert "KDIGO" in card["detail"]
    kinds = {a["resource"]["resourceType"] for s in card["suggestions"] for a in s["actions"]}
    # no dosing draft on dialysis; no re-test order either (Endocrine Society 2024, the default)
    assert "MedicationRequest" not in kinds and kinds == {"Condition"}
