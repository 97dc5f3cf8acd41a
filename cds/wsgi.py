"""WSGI entry point for gunicorn: ``gunicorn cds.wsgi:application`` (config from MSKCDS_* env)."""
import sys

from cds import create_app
from cds.config import ConfigError
from cds.knowledge.loader import RulesError

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
