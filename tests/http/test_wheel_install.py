"""The built distribution, installed as an operator would, runs on its defaults.

An sdist is built from the checkout, a wheel from that sdist (what ``pip install`` does
with a source release), and the wheel is installed into a fresh virtual environment
outside the checkout. There, with a home directory of its own and no MSKCDS_* settings,
``mskcds evaluate``, ``mskcds migrate`` and ``mskcds serve`` must work: the rules come
from inside the package, and the database goes to the user data directory, never into
the install folder.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import requests

from conftest import EXAMPLES, REPO, free_port

RULE_FILES = sorted(p.name for p in (REPO / "rules").glob("*.yaml"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("wheel-install")
    dist = tmp / "dist"
    sdist = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_sdist(sys.argv[1]))", str(dist)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sdist.returncode == 0, sdist.stderr
    (archive,) = dist.glob("mskcds-*.tar.gz")
    wheel_build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), str(archive)], capture_output=True, text=True, timeout=300)
    assert wheel_build.returncode == 0, wheel_build.stderr
    (wheel,) = dist.glob("mskcds-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    home = tmp / "home"
    work = tmp / "work"
    home.mkdir()
    work.mkdir()
    return {"archive": archive, "wheel": wheel, "venv": venv, "home": home, "work": work}


def operator_env(home: Path, **extra: str) -> dict[str, str]:
    """A shell with no MSKCDS_* settings, no PYTHONPATH and a home of its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MSKCDS_", "PYTHON", "XDG_", "PROMETHEUS_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), **extra)
    return env


def test_sdist_and_wheel_carry_the_rules(installed):
    names = set(tarfile.open(installed["archive"]).getnames())
    assert {f"mskcds-0.1.0/rules/{name}" for name in RULE_FILES} <= names
    in_wheel = set(zipfile.ZipFile(installed["wheel"]).namelist())
    assert {f"cds/_rules/{name}" for name in RULE_FILES} <= in_wheel
    assert "cds/store/migrations/script.py.mako" in in_wheel
    # Byte for byte the repository's rules (the wheel was built from the sdist).
    with zipfile.ZipFile(installed["wheel"]) as zf:
        for name in RULE_FILES:
            assert zf.read(f"cds/_rules/{name}") == (REPO / "rules" / name).read_bytes(), name


def test_evaluate_runs_from_the_wheel(installed):
    example = sorted(EXAMPLES.glob("*.request.json"))[0]
    mskcds = installed["venv"] / "bin" / "mskcds"
    out = subprocess.run([str(mskcds), "evaluate", str(example)], cwd=installed["work"],
                         env=operator_env(installed["home"]), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert isinstance(body["cards"], list)
    # The package it ran is the installed one, reading its own rules.
    where = subprocess.run([str(installed["venv"] / "bin" / "python"), "-c",
                            "import cds.config as c; print(c.default_rules_dir())"],
                           cwd=installed["work"], env=operator_env(installed["home"]),
                           capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed["venv"]), where.stdout
    assert Path(where.stdout.strip()).name == "_rules"


def test_migrate_writes_to_the_user_data_dir(installed):
    mskcds = installed["venv"] / "bin" / "mskcds"
    out = subprocess.run([str(mskcds), "migrate"], cwd=installed["work"],
                         env=operator_env(installed["home"]), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "revision 0002" in out.stdout  # the newest migration (0002: issued-card owner)
    data = installed["home"] / ".local" / "share" / "mskcds"
    assert (data / "mskcds.sqlite3").is_file()
    assert not list(installed["venv"].rglob("*.sqlite3")), "wrote into the install folder"
    # MSKCDS_DATA_DIR moves it.
    elsewhere = installed["work"] / "data"
    out = subprocess.run([str(mskcds), "migrate"], cwd=installed["work"],
                         env=operator_env(installed["home"], MSKCDS_DATA_DIR=str(elsewhere)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (elsewhere / "mskcds.sqlite3").is_file()


def test_serve_answers_discovery_from_the_wheel(installed):
    mskcds = installed["venv"] / "bin" / "mskcds"
    port = free_port()
    log = installed["work"] / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(mskcds), "serve", "--port", str(port), "--workers", "1"],
                                cwd=installed["work"],
                                env=operator_env(installed["home"], MSKCDS_REQUIRE_AUTH="false"),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/cds-services", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        assert answer is not None, log.read_text(errors="replace")
        assert answer.status_code == 200
        assert [s["id"] for s in answer.json()["services"]] == [
            "bone-muscle-health", "bone-health-order-select", "bone-health-order-sign"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert not list(installed["venv"].rglob("*.sqlite3")), "wrote into the install folder"
