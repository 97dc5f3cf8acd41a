"""A throw-away PostgreSQL server for fault tests: started, stopped and restarted by the test.

The shared test database (MSKCDS_TEST_POSTGRES_URL) must never be stopped, so a test that
takes PostgreSQL down starts its own, as ``.ci/run`` does: ``initdb`` in a temporary
directory (as user ``postgres`` when run as root), ``pg_ctl`` on a free loopback port.
Skipped with a reason when the PostgreSQL server binaries are not installed, unless
MSKCDS_REQUIRE_POSTGRES=1 (CI), where that is a failure.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class ThrowawayPostgres:
    def __init__(self) -> None:
        bindir = _bin_dir()
        if bindir is None:
            if os.environ.get("MSKCDS_REQUIRE_POSTGRES") == "1":
                pytest.fail("PostgreSQL server binaries (initdb) are required but missing")
            pytest.skip("PostgreSQL server binaries (initdb) not installed")
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="mskcds-pg-"))
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
                  "--no-sync")

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self._as, str(self.bin / tool), *args], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> "ThrowawayPostgres":
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        return self

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def create_database(self, name: str = "mskcds") -> str:
        subprocess.run([str(self.bin / "psql"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", f"CREATE DATABASE {name}"], check=True, timeout=30,
                       stdout=subprocess.DEVNULL)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            self.stop()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "ThrowawayPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
