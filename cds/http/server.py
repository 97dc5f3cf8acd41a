"""Serving the app with gunicorn from inside ``mskcds serve``.

The command binds the listening socket itself (so a port in use is one clear line, before
anything is printed as served), builds the app once (as gunicorn's ``--preload`` would:
one start-up log, errors as one line), then hands both to a gunicorn master running in
this process. Workers fork from it; each opens its own database connections.
"""
from __future__ import annotations

import socket
import sys
from typing import Any, Mapping, Sequence

from flask import Flask
from gunicorn.app.base import BaseApplication

from cds import metrics


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port``; OSError (e.g. EADDRINUSE) when it cannot be had."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


#: gunicorn's worker class: gthread whose threads only get whole requests (a slow client
#: costs a buffer, not a thread) and whose own error answers are JSON (cds/http/worker.py).
WORKER_CLASS = "cds.http.worker.BufferedThreadWorker"
TIMEOUT = 30
GRACEFUL_TIMEOUT = 10


def gunicorn_argv(host: str, port: int, *, workers: int, threads: int,
                  app: str = "cds.wsgi:application",
                  graceful_timeout: int = GRACEFUL_TIMEOUT) -> list[str]:
    """The same serving layer as a gunicorn command line (the real-server tests, and the
    benchmark's floor app, are served exactly as ``mskcds serve`` serves)."""
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}",
            "--workers", str(workers), "--worker-class", WORKER_CLASS, "--threads", str(threads),
            "--timeout", str(TIMEOUT), "--graceful-timeout", str(graceful_timeout),
            "--preload", "--no-control-socket", app]


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn hook: a worker ended; drop its live metric files (its counts stay)."""
    metrics.mark_process_dead(worker.pid)


def gunicorn_options(listener: socket.socket, *, workers: int, threads: int,
                     access_log: bool, forwarded_allow_ips: Sequence[str] = ()) -> dict[str, Any]:
    return {
        # X-Forwarded-Proto/-Ssl are believed only from these addresses (MSKCDS_TRUSTED_PROXIES;
        # gunicorn's own default trusts 127.0.0.1, i.e. anyone on the machine).
        "forwarded_allow_ips": ",".join(forwarded_allow_ips),
        "bind": [f"fd://{listener.fileno()}"],
        "workers": workers,
        "worker_class": WORKER_CLASS,
        "threads": threads,
        "timeout": TIMEOUT,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "accesslog": "-" if access_log else None,
        "preload_app": True,
        "control_socket_disable": True,
        "child_exit": child_exit,
    }


class _Gunicorn(BaseApplication):
    def __init__(self, app: Flask, options: Mapping[str, Any]):
        self._app = app
        self._options = dict(options)
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app


def run(app: Flask, options: Mapping[str, Any]) -> None:
    """Run a gunicorn master for ``app`` until it is stopped (SIGTERM / SIGINT)."""
    _Gunicorn(app, options).run()
