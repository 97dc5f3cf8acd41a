"""The ``mskcds`` command as an operator meets it: one-line errors that name the cause and
the fix (exit 2 for usage and settings, 1 for run-time failures), help with defaults,
validated options, a bind checked before "serving on", a clean exit on a closed pipe,
honest feedback counts and every problem of a trusted-clients file at once.

Every command runs as a real process (the installed console script).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds.config import default_workers
from conftest import EXAMPLES, REPO, free_port, load_json, run_server

MSKCDS = str(Path(sys.executable).with_name("mskcds"))
EXAMPLE = sorted(EXAMPLES.glob("*.request.json"))[0]
SERVICE = "/cds-services/bone-muscle-health"


def mskcds(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
           **kw) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([MSKCDS, *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=kw.pop("cwd", REPO), **kw)


def one_line_error(run: subprocess.CompletedProcess[str], status: int) -> str:
    assert run.returncode == status, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    return lines[0]


# --------------------------------------------------------------------------- migrate
def test_migrate_unknown_revision_is_a_usage_error_naming_the_known_ones(tmp_path):
    run = mskcds("migrate", "--revision", "nope",
                 env={"MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'm.sqlite3'}"})
    line = one_line_error(run, 2)
    assert "'nope'" in line and "0001" in line and "head" in line


def test_migrate_unparsable_url_is_one_line_without_echoing_it():
    run = mskcds("migrate", env={"MSKCDS_DATABASE_URL": "not a url:s3cret-pw"})
    line = one_line_error(run, 2)
    assert "MSKCDS_DATABASE_URL" in line and "postgresql+psycopg://" in line
    assert "s3cret-pw" not in line


@pytest.mark.parametrize("command", [["migrate"], ["feedback-report"], ["purge", "--dry-run"]])
def test_database_down_is_one_line_naming_it_and_the_setting(command):
    url = "postgresql+psycopg://mskcds:s3cret-pw@127.0.0.1:1/mskcds"
    run = mskcds(*command, env={"MSKCDS_DATABASE_URL": url})
    line = one_line_error(run, 1)
    assert "127.0.0.1:1" in line and "refused" in line.lower()
    assert "MSKCDS_DATABASE_URL" in line
    assert "s3cret-pw" not in run.stderr


def test_unwritable_data_dir_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    run = mskcds("migrate", env={"MSKCDS_DATA_DIR": str(blocker / "data"),
                                 "MSKCDS_DATABASE_URL": ""})
    line = one_line_error(run, 2)
    assert "MSKCDS_DATA_DIR" in line and str(blocker) in line


# --------------------------------------------------------------------------- serve
@pytest.mark.parametrize("args, message", [
    (["--port", "99999"], "99999 is not a port number (1-65535)"),
    (["--port", "0"], "0 is not a port number"),
    (["--port", "http"], "'http' is not a port number"),
    (["--workers", "0"], "--workers: 0 is too small"),
    (["--threads", "-1"], "--threads: -1 is too small"),
])
def test_serve_validates_its_options(args, message):
    run = mskcds("serve", *args, env={"MSKCDS_REQUIRE_AUTH": "false"}, timeout=30)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert "serving on" not in run.stderr


def test_serve_on_a_port_in_use_says_so_at_once(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        started = time.monotonic()
        run = mskcds("serve", "--port", str(port), env={"MSKCDS_REQUIRE_AUTH": "false"},
                     timeout=30)
        elapsed = time.monotonic() - started
    line = one_line_error(run, 1)
    assert f"127.0.0.1:{port} is already in use" in line and "--port" in line
    assert "serving on" not in run.stderr
    assert elapsed < 10  # no gunicorn "Connection in use" retries


def test_serve_prints_serving_on_once_bound_and_warns_once(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([MSKCDS, "serve", "--port", str(port), "--workers", "1"],
                                env={**os.environ, "MSKCDS_REQUIRE_AUTH": "false",
                                     "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"},
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "serving on" in log.read_text(errors="replace"):
                break
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.1)
        # The socket was bound before the line was printed: a connection succeeds now.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert r.status_code == 200
        text = log.read_text(errors="replace")
        assert text.count(f"serving on http://127.0.0.1:{port}/cds-services") == 1
        assert text.count("AUTHENTICATION IS OFF") == 1, text
        assert "MSKCDS_ALLOWED_FHIR_SERVERS" in text  # the allow-list state, and its setting
        assert "Connection in use" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_into_a_closed_pipe_exits_quietly():
    # `mskcds evaluate ... | head -c 1`: the reader goes away after one byte.
    proc = subprocess.Popen(f"{MSKCDS} evaluate --pretty {EXAMPLE} | head -c 1",
                            shell=True, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "MSKCDS_REQUIRE_AUTH":
                                                         "false"})
    out, err = proc.communicate(timeout=60)
    assert out == b"{"
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err


def test_evaluate_unknown_service_is_a_usage_error():
    line = one_line_error(mskcds("evaluate", "--service", "nope", str(EXAMPLE)), 2)
    assert "'nope'" in line and "bone-muscle-health" in line


def test_keygen_never_overwrites_a_key(tmp_path):
    existing = tmp_path / "key.pem"
    existing.write_text("precious")
    line = one_line_error(mskcds("keygen", "--private", str(existing),
                                 "--jwks", str(tmp_path / "jwks.json")), 2)
    assert "already exists" in line
    assert existing.read_text() == "precious"


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("command, expected", [
    ("serve", ["--host", "(default: 127.0.0.1)", "--port", "(default: 8080)",
               "--workers", f"(default: {default_workers()})", "--threads", "(default: 4)"]),
    ("evaluate", ["--service", "default: the one that answers the request's hook", "--pretty", "indent",
                  "--hook"]),
    ("migrate", ["--revision", "(default: head)"]),
    ("feedback-report", ["--format", "(default: table)", "--from", "--to"]),
    ("purge", ["--days", "MSKCDS_RETENTION_DAYS", "--dry-run"]),
    ("token", ["--lifetime", "(default: 300)"]),
    ("keygen", ["--alg", "(default: ES384)"]),
])
def test_every_option_has_help_and_its_default(command, expected):
    run = mskcds(command, "--help")
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())  # argparse wraps lines
    for piece in expected:
        assert piece in text, (piece, run.stdout)
    # every option line carries some help text
    for line in run.stdout.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") and "  " not in stripped:
            index = run.stdout.splitlines().index(line)
            follow = run.stdout.splitlines()[index + 1].strip()
            assert follow and not follow.startswith("-"), (command, line)


# --------------------------------------------------------------------------- feedback
def test_feedback_report_shows_the_period_as_given(tmp_path):
    env = {"MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'r.sqlite3'}"}
    run = mskcds("feedback-report", "--from", "2026-01-01", "--to", "2026-03-31", env=env)
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    assert first == "Feedback on cards issued from 2026-01-01 to 2026-03-31 (inclusive)"
    run = mskcds("feedback-report", env=env)
    assert run.stdout.splitlines()[0] == "Feedback on cards issued at any time"
    run = mskcds("feedback-report", "--from", "2026-02-01T08:00:00Z", env=env)
    assert run.stdout.splitlines()[0] == "Feedback on cards issued from 2026-02-01T08:00:00Z on"


def test_feedback_retry_is_counted_as_a_duplicate(tmp_path):
    with run_server({"MSKCDS_REQUIRE_AUTH": "false"}, tmp_path, workers=1) as server:
        r = requests.post(server.url(SERVICE), json=load_json(EXAMPLE), timeout=30)
        assert r.status_code == 200 and r.json()["cards"], r.text
        card = r.json()["cards"][0]
        body = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-02T03:04:05Z"}]}
        first = requests.post(server.url(SERVICE + "/feedback"), json=body, timeout=30)
        assert first.status_code == 200 and first.json() == {"stored": 1, "duplicates": 0}
        again = requests.post(server.url(SERVICE + "/feedback"), json=body, timeout=30)
        assert again.status_code == 200 and again.json() == {"stored": 0, "duplicates": 1}


# --------------------------------------------------------------------------- clients file
def test_every_problem_of_a_clients_file_is_reported_at_once(tmp_path):
    bad = tmp_path / "clients.yaml"
    bad.write_text(json.dumps({"clients": [
        {"iss": "a", "jwks_url": "http://a.example/jwks"},                   # not https
        {"jwks_url": "https://b.example/jwks", "tenant": ""},                # no iss, bad tenant
        {"iss": "c", "jwks_url": "https://c.example/j", "fhir_servers": ["ftp://x"]},
    ]}))
    run = mskcds("serve", "--port", str(free_port()),
                 env={"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(bad),
                      "MSKCDS_REPLAY_CACHE_URL": "memory"})
    line = one_line_error(run, 2)
    for piece in ("4 problems", "clients[0].jwks_url", "clients[1].iss", "clients[1].tenant",
                  "clients[2].fhir_servers[0]"):
        assert piece in line, (piece, line)
    assert "serving on" not in run.stderr
