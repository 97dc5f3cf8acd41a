"""Start-up refuses configurations an attacker could use, and aud never follows the caller.

* authentication on without ``MSKCDS_PUBLIC_BASE_URL``: aud was checked against the URL
  built from the request's ``Host`` / ``X-Forwarded-*`` headers, so a token for
  ``https://evil.example/...`` sent with ``Host: evil.example`` got 200. Now start-up stops.
* ``mskcds serve --host 0.0.0.0`` with authentication off: refused unless
  ``--insecure-allow-remote`` (or MSKCDS_INSECURE_ALLOW_REMOTE=true).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from auth_support import new_ec_signer, write_clients
from conftest import REPO, ServerProcess, free_port, run_server

pytestmark = pytest.mark.slow

SERVICE = "/cds-services/bone-muscle-health"


def _clients(tmp_path, signer):
    return write_clients(tmp_path / "clients.yaml", [{"iss": signer.iss, "jwks": signer.jwks()}])


def test_auth_on_without_public_base_url_does_not_start(tmp_path):
    signer = new_ec_signer("https://ehr.example.org", "k-start")
    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(_clients(tmp_path, signer)),
           "MSKCDS_REPLAY_CACHE_URL": "memory", "MSKCDS_PUBLIC_BASE_URL": "",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'm.sqlite3'}"}
    # gunicorn straight on the WSGI entry point
    server = ServerProcess(env, workers=1, log_path=tmp_path / "server.log")
    with pytest.raises(RuntimeError, match="server exited"):
        server.start(timeout=30)
    server.stop()
    assert "MSKCDS_PUBLIC_BASE_URL is not set" in server.log_text()
    assert "Traceback" not in server.log_text()
    # and `mskcds serve`, before gunicorn starts
    run = subprocess.run([sys.executable, "-m", "cds.cli", "serve", "--port", str(free_port())],
                         cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2, run.stderr
    assert "MSKCDS_PUBLIC_BASE_URL is not set" in run.stderr and "Traceback" not in run.stderr
    # A base URL that is not one (or plain http to another machine) is refused too.
    run = subprocess.run([sys.executable, "-m", "cds.cli", "serve", "--port", str(free_port())],
                         cwd=REPO, env={**os.environ, **env,
                                        "MSKCDS_PUBLIC_BASE_URL": "http://cds.example.org"},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "MSKCDS_PUBLIC_BASE_URL" in run.stderr, run.stderr


def test_forged_host_and_forwarded_headers_do_not_move_aud(tmp_path):
    signer = new_ec_signer("https://ehr.example.org", "k-aud")
    env = {"MSKCDS_REQUIRE_AUTH": "true", "MSKCDS_CLIENTS_FILE": str(_clients(tmp_path, signer)),
           "MSKCDS_REPLAY_CACHE_URL": "memory"}
    with run_server(env, tmp_path, workers=1) as server:
        forged = {"Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on",
                  "X-Forwarded-Host": "evil.example"}
        for aud in ("https://evil.example" + SERVICE, "http://evil.example" + SERVICE):
            r = requests.post(server.url(SERVICE), json={}, timeout=10,
                              headers={**signer.bearer(aud), **forged})
            assert r.status_code == 401, (aud, r.status_code, r.text)
        time.sleep(0.1)
        assert "is not this endpoint" in server.log_text()
        # The configured public URL is the aud, whatever the headers say.
        r = requests.post(server.url(SERVICE), json={}, timeout=10,
                          headers={**signer.bearer(server.url(SERVICE)), **forged})
        assert r.status_code == 400, r.text  # past authentication: the body is not a request


def _serve(args, env, timeout=30.0):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cds.cli", "serve", "--port", str(port),
                             "--workers", "1", *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, port


def test_auth_off_on_a_non_loopback_bind_needs_an_explicit_flag(tmp_path):
    env = {"MSKCDS_REQUIRE_AUTH": "false",
           "MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'm.sqlite3'}"}
    proc, _ = _serve(["--host", "0.0.0.0"], env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert b"refusing to serve with authentication OFF on 0.0.0.0" in out
    # Loopback: fine. With the flag: starts (and still warns).
    for args, extra in ((["--host", "127.0.0.1"], {}),
                        (["--host", "0.0.0.0", "--insecure-allow-remote"], {}),
                        (["--host", "0.0.0.0"], {"MSKCDS_INSECURE_ALLOW_REMOTE": "true"})):
        proc, port = _serve(args, {**env, **extra})
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, proc.stdout.read()
                try:
                    r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    if r.status_code == 200:
                        assert json.loads(r.text)["status"] == "ok"
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, "did not start"
                time.sleep(0.1)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=20)
