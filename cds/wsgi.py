"""WSGI entry point for gunicorn: ``gunicorn cds.wsgi:application`` (config from MSKCDS_* env)."""
from . import create_app

application = create_app()
