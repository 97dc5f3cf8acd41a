"""WSGI entry point for gunicorn: ``gunicorn cds.wsgi:application`` (config from MSKCDS_* env)."""
import sys

from . import create_app
from .config import ConfigError

try:
    application = create_app()
except ConfigError as exc:
    # A setting or the trusted-clients file is unusable: say what, and stop the server
    # (no stack trace; gunicorn exits with "App failed to load").
    print(f"mskcds: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(4) from None
