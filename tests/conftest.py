"""Shared fixtures: a real server process, the shared external data, an app factory."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
# Nothing a test starts writes to the user's data directory (the default MSKCDS_DATA_DIR):
# one throw-away directory per test session, inherited by every server process.
os.environ.setdefault("MSKCDS_DATA_DIR", tempfile.mkdtemp(prefix="mskcds-test-data-"))
SHARED = REPO.parent / "shared" / "external"
EXAMPLES = REPO / "fhir_examples"

# Every card the tests see (in-process apps, the CLI and the servers they start, which
# inherit this environment) is checked against the CDS Hooks card schema; production
# skips that per-card check (MSKCDS_CHECK_CARDS, see cds/config.py).
os.environ.setdefault("MSKCDS_CHECK_CARDS", "true")


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared/external; skipped with a reason when absent (CI sets MSKCDS_REQUIRE_SHARED=1)."""
    if not SHARED.is_dir():
        if os.environ.get("MSKCDS_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SHARED} is required in CI but missing")
        pytest.skip(f"{SHARED} not found: run from a checkout with ../shared beside it")
    return SHARED


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class ServerProcess:
    """gunicorn serving cds.wsgi:application in its own process, on a free port."""

    def __init__(self, env: Mapping[str, str], workers: int = 2, log_path: Path | None = None):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "MSKCDS_LOG_LEVEL": "INFO", **env}
        if self.env.get("MSKCDS_REQUIRE_AUTH", "true").lower() in ("1", "true", "yes", "on") \
                and "MSKCDS_PUBLIC_BASE_URL" not in env:
            # Authentication needs the public URL (the JWT aud); here it is the test server's.
            self.env["MSKCDS_PUBLIC_BASE_URL"] = self.base_url
        self.workers = workers
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file = None

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        # Served as `mskcds serve` serves (its worker class and settings), with this many workers.
        from cds.http.server import gunicorn_argv

        cmd = gunicorn_argv("127.0.0.1", self.port, workers=self.workers, threads=4,
                            graceful_timeout=5)
        self._log_file = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text() if self.log_path else ""
                raise RuntimeError(f"server exited with {self.proc.returncode}\n{log}")
            try:
                if requests.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become healthy in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def url(self, path: str) -> str:
        return self.base_url + path


@contextlib.contextmanager
def run_server(env: Mapping[str, str], tmp_path: Path, workers: int = 2) -> Iterator[ServerProcess]:
    env = {"MSKCDS_DATABASE_URL": f"sqlite:///{tmp_path / 'mskcds.sqlite3'}", **env}
    server = ServerProcess(env, workers=workers, log_path=tmp_path / "server.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fhir():
    """A real FHIR test server (tests/fhir_test_server.py) on a free loopback port."""
    from fhir_test_server import FhirTestServer

    with FhirTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def foreign():
    """Another FHIR server, at another origin: nothing may ever reach it."""
    from fhir_test_server import FhirTestServer

    with FhirTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server with authentication off (as `make run`), shared by a test module."""
    tmp = tmp_path_factory.mktemp("server")
    with run_server({"MSKCDS_REQUIRE_AUTH": "false"}, tmp) as server:
        yield server


@pytest.fixture()
def make_app(tmp_path: Path):
    """Build an in-process app (Flask test client) with MSKCDS_* overrides."""
    from cds import create_app

    def factory(**overrides: Any):
        base = {"require_auth": False, "database_url": f"sqlite:///{tmp_path / 'app.sqlite3'}"}
        base.update(overrides)
        return create_app(base)

    return factory


_HTTP_DIR = Path(__file__).resolve().parent / "http"
#: Fixtures that start a real server (a FHIR test server, gunicorn): a test using one is slow.
SERVER_FIXTURES = frozenset({"fhir", "foreign", "open_server"})


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Everything under tests/http/ talks to real server processes, and a test anywhere that
    uses a server fixture starts one: both are `slow`, and `make check` (the fast loop) leaves
    them out."""
    for item in items:
        if _HTTP_DIR in Path(str(item.fspath)).resolve().parents \
                or SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_servers(request: pytest.FixtureRequest,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast loop's contract, enforced: a test not marked slow that starts a process
    (gunicorn, the CLI, a multiprocessing worker) or the FHIR test server fails, naming
    itself, instead of quietly making `make check` slow."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import multiprocessing.process

    import fhir_test_server

    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{request.node.nodeid} starts {what} but is not marked slow: "
                                 "mark it @pytest.mark.slow (or move it under tests/http/)")
        return refused

    monkeypatch.setattr(subprocess, "Popen", refuse("a process"))
    monkeypatch.setattr(os, "fork", refuse("a process (fork)"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("a process"))
    monkeypatch.setattr(fhir_test_server.FhirTestServer, "start", refuse("the FHIR test server"))
