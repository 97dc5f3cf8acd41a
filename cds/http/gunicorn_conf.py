"""gunicorn settings for running ``cds.wsgi:application`` with gunicorn's own command line:

    gunicorn -c python:cds.http.gunicorn_conf --bind 0.0.0.0:8080 --workers 4 cds.wsgi:application

(``mskcds serve`` sets the same itself.) Loaded in the master before the app: it chooses
and empties the metrics directory the workers share, and drops a dead worker's live
metric files.
"""
from typing import Any

from cds import metrics

metrics.prepare_multiprocess_dir()

preload_app = True


def child_exit(server: Any, worker: Any) -> None:  # noqa: D103 - gunicorn hook
    metrics.mark_process_dead(worker.pid)
