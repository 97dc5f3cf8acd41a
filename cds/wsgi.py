"""WSGI entry point for gunicorn: ``gunicorn cds.wsgi:application`` (config from MSKCDS_* env)."""
import os
import sys

from cds.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

# gunicorn workers keep their own counters; prometheus_client adds them up from files in one
# directory, chosen before the app (and prometheus_client) is imported. With --preload (or
# gunicorn -c python:cds.http.gunicorn_conf) this runs once, in the master.
if not os.environ.get(MULTIPROC_ENV):
    prepare_multiprocess_dir()

from cds import create_app  # noqa: E402
from cds.config import ConfigError  # noqa: E402
from cds.knowledge.loader import RulesError  # noqa: E402

try:
    application = create_app()
except RulesError as exc:
    # A rules/ file is malformed or inconsistent: name the file and field, stop the server.
    print(f"mskcds: rules error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
except ConfigError as exc:
    # A setting or the trusted-clients file is unusable: say what, and stop the server
    # (no stack trace; gunicorn exits with "App failed to load").
    print(f"mskcds: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
