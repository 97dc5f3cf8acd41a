"""mskcds command line: serve, evaluate a request file, make client keys and tokens, manage feedback storage."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

from cds.config import Config, ConfigError, default_workers
from cds.errors import ServiceError


class CliError(Exception):
    """A command cannot do what was asked: one line for the user, and the exit status
    (2: the invocation or a setting is wrong; 1: something failed at run time)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small: at least 1")
    return value


def _cmd_serve(args: argparse.Namespace) -> int:
    import errno

    config = Config.from_env()  # a bad setting stops here, before anything is bound
    from cds.security.clients import is_loopback

    if not config.require_auth and not is_loopback(args.host) \
            and not (args.insecure_allow_remote or config.insecure_allow_remote):
        raise CliError(f"refusing to serve with authentication OFF on {args.host}, which other "
                       "machines can reach: turn authentication on (MSKCDS_REQUIRE_AUTH=true "
                       "with MSKCDS_CLIENTS_FILE), bind to 127.0.0.1, or pass "
                       "--insecure-allow-remote if you really mean it", status=2)
    from cds import metrics
    from cds.http import server

    try:
        listener = server.bind_listener(args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"{args.host}:{args.port} is already in use (another mskcds or "
                           f"server?): stop it or choose another --port") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CliError(f"not allowed to listen on {args.host}:{args.port} (ports below "
                           f"1024 need privileges): choose --port 1024 or higher") from None
        raise CliError(f"cannot listen on {args.host}:{args.port}: "
                       f"{exc.strerror or exc}; check --host") from None
    # Workers share one metrics directory; it must be chosen before the app is built.
    metrics.prepare_multiprocess_dir()
    from cds import create_app

    app = create_app(config)  # as gunicorn --preload: built once, before the workers fork
    workers = args.workers
    options = server.gunicorn_options(listener, workers=workers, threads=args.threads,
                                      access_log=args.access_log,
                                      forwarded_allow_ips=config.trusted_proxies)
    print(f"mskcds: serving on http://{_url_host(args.host)}:{args.port}/cds-services "
          f"({workers} worker(s) x {args.threads} thread(s))", file=sys.stderr, flush=True)
    server.run(app, options)
    return 0


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _service_for(engine: Any, document: Any, hook: str | None) -> str:
    """The first service that answers the request's hook (or --hook for a Bundle): an
    order-select or order-sign request goes to the order checks, patient-view to the record."""
    wanted = hook or (document.get("hook") if isinstance(document, dict) else None) or "patient-view"
    for service_id in engine.services:
        if engine.services[service_id].hook == wanted:
            return str(service_id)
    return "bone-muscle-health"


def _engine_and_request(args: argparse.Namespace, *,
                        default_hook: bool) -> tuple[Config, Any, Any, Any]:
    """(config, engine, service, request) for ``args.file``: a CDS Hooks request, or a FHIR
    Bundle wrapped as one (the hook: --hook, or with ``default_hook`` the service's own)."""
    from cds.engine import Engine
    from cds.hooks.bundle import request_from_bundle

    config = Config.from_env()
    engine = Engine(config)
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {args.file}: {exc}", status=2) from None
    service_id = getattr(args, "service", None) or _service_for(engine, document, args.hook)
    if service_id not in engine.services:
        raise CliError(f"no service {service_id!r}; the services are: "
                       f"{', '.join(engine.services)}", status=2)
    service = engine.service(service_id)
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        hook = args.hook or (service.hook if default_hook else None)
        if not hook:
            raise CliError("a FHIR Bundle needs --hook (e.g. --hook patient-view)", status=2)
        try:
            document = request_from_bundle(document, hook, dict(service.prefetch))
        except ValueError as exc:
            raise CliError(f"{args.file}: {exc}", status=2) from None
    return config, engine, service, document


def _cmd_evaluate(args: argparse.Namespace) -> int:
    config, engine, service, document = _engine_and_request(args, default_hook=False)
    try:
        result = engine.call(service.id, document, allowed_fhir_servers=config.allowed_fhir_servers)
        body, status = result.response, 200
    except ServiceError as exc:
        body, status = exc.body(), exc.status
    json.dump(body, sys.stdout, indent=2 if args.pretty else None, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if status == 200 else 1


def _cmd_preview(args: argparse.Namespace) -> int:
    from cds.pages.preview import render_preview
    from cds.urls import base_url

    config, engine, service, document = _engine_and_request(args, default_hook=True)
    try:
        result = engine.preview(service.id, document,
                                allowed_fhir_servers=config.allowed_fhir_servers)
    except ServiceError as exc:
        json.dump(exc.body(), sys.stderr, indent=2, ensure_ascii=False)
        sys.stderr.write("\n")
        raise CliError(f"the service answered {exc.status}: nothing written") from None
    assert result.facts is not None   # preview() always carries them
    docs = base_url(config.public_base_url) if config.public_base_url else None
    html = render_preview(result.facts, result.response["cards"], engine.rules, docs_base=docs,
                          csp_meta=True)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".preview.html")
    try:
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"mskcds preview: {len(result.response['cards'])} card(s) written to {out}",
          file=sys.stderr)
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from cds.security.tokens import generate_key, public_jwks

    key = generate_key(args.alg)
    kid = args.kid or str(uuid.uuid4())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{args.private} already exists: choose another --private path "
                       "(an existing key is never overwritten)", status=2) from None
    except OSError as exc:
        raise CliError(f"cannot write {args.private}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    Path(args.jwks).write_text(json.dumps(public_jwks(key, kid, args.alg), indent=2) + "\n",
                               encoding="utf-8")
    print(f"mskcds keygen: private key {args.private} (keep it with the EHR), public JWKS "
          f"{args.jwks} (kid {kid}, {args.alg})", file=sys.stderr)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from cds.security.tokens import load_private_key, mint_token

    try:
        key, kid, alg = load_private_key(args.key)
        token = mint_token(key, iss=args.iss, aud=args.aud, kid=args.kid or kid or "",
                           alg=args.alg or alg, jku=args.jku, tenant=args.tenant,
                           lifetime=args.lifetime)
    except (OSError, ValueError, KeyError) as exc:
        print(f"mskcds token: {exc}", file=sys.stderr)
        return 2
    if not (args.kid or kid):
        print("mskcds token: no kid: pass --kid (CDS Hooks requires one)", file=sys.stderr)
        return 2
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mskcds", description=__doc__,
                                     epilog="Settings come from MSKCDS_* environment variables "
                                     "(see the README, 'Configuration').")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helpful: dict[str, Any] = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}

    serve = sub.add_parser("serve", help="serve the CDS Hooks endpoints with gunicorn",
                           description="Serve the CDS Hooks endpoints (discovery, services, "
                           "feedback, /healthz, /readyz, /metrics, /openapi.json) with gunicorn.",
                           **helpful)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(0.0.0.0: every interface)")
    serve.add_argument("--port", type=port_number, default=8080, help="TCP port (1-65535)")
    serve.add_argument("--workers", type=positive_int, default=default_workers(),
                       help="worker processes (at least 1; the default is one per CPU)")
    serve.add_argument("--threads", type=positive_int, default=4,
                       help="threads per worker (at least 1)")
    serve.add_argument("--insecure-allow-remote", action="store_true",
                       help="allow authentication OFF on a non-loopback --host (never in "
                       "production; also MSKCDS_INSECURE_ALLOW_REMOTE=true)")
    serve.add_argument("--access-log", action="store_true", help="gunicorn access log to stdout "
                       "(off by default: our own request log carries no patient data)")
    serve.set_defaults(func=_cmd_serve)

    evaluate = sub.add_parser("evaluate", help="evaluate a CDS Hooks request (or FHIR Bundle) file "
                              "and print the response JSON the HTTP endpoint would return",
                              description="Evaluate a CDS Hooks request file (or a FHIR Bundle "
                              "with --hook) and print the JSON the service endpoint would "
                              "answer. Exit status 0 for cards, 1 for an error answer.", **helpful)
    evaluate.add_argument("file", help="a CDS Hooks request (JSON) or a FHIR Bundle")
    evaluate.add_argument("--hook", help="with a FHIR Bundle: the hook to simulate, e.g. "
                          "patient-view")
    evaluate.add_argument("--service", default=argparse.SUPPRESS,
                          help="the service id to call (GET /cds-services lists them; "
                          "default: the one that answers the request's hook)")
    evaluate.add_argument("--pretty", action="store_true", help="indent the JSON")
    evaluate.set_defaults(func=_cmd_evaluate)

    preview = sub.add_parser("preview", help="render a CDS Hooks request (or FHIR Bundle) file's "
                             "cards as an EHR would show them, with the values read and trend "
                             "charts, into one self-contained HTML file", **helpful)
    preview.add_argument("file")
    preview.add_argument("-o", "--output", help="HTML file to write (default: FILE with "
                         ".preview.html)")
    preview.add_argument("--hook", help="with a FHIR Bundle: the hook to simulate (default: the "
                         "service's hook)")
    preview.add_argument("--service", default="bone-muscle-health")
    preview.set_defaults(func=_cmd_preview)

    keygen = sub.add_parser("keygen", help="make a CDS Client key pair: private PEM + public JWKS "
                            "(for a smoke test, or an EHR that has none)", **helpful)
    keygen.add_argument("--alg", default="ES384", help="signing algorithm", choices=["ES256", "ES384", "ES512", "RS256",
                                                            "RS384", "RS512", "PS256", "PS384",
                                                            "PS512"])
    keygen.add_argument("--kid", help="key id (default: a random UUID)")
    keygen.add_argument("--private", required=True, help="where to write the private key (PEM)")
    keygen.add_argument("--jwks", required=True, help="where to write the public JWKS (JSON)")
    keygen.set_defaults(func=_cmd_keygen)

    token = sub.add_parser("token", help="sign a CDS Hooks client JWT, as an EHR would, and "
                           "print it (for: Authorization: Bearer <token>)", **helpful)
    token.add_argument("--key", required=True, help="private key: PEM, private JWK or JWKS")
    token.add_argument("--iss", required=True, help="issuer, as in the trusted-clients file")
    token.add_argument("--aud", required=True, help="the full URL of the endpoint to call, "
                       "e.g. http://127.0.0.1:8080/cds-services/bone-muscle-health")
    token.add_argument("--kid", help="key id (default: the JWK's kid)")
    token.add_argument("--alg", help="default: from the key (ES384 for P-384, RS384 for RSA)")
    token.add_argument("--jku", help="JWKS URL to name in the header (must be the client's "
                       "configured jwks_url)")
    token.add_argument("--tenant", help="tenant claim, when the client's entry names one")
    token.add_argument("--lifetime", type=positive_int, default=300,
                       help="seconds until the token expires")
    token.set_defaults(func=_cmd_token)

    from cds.store.reporting import register as register_storage_commands
    register_storage_commands(sub, **helpful)  # migrate, feedback-report, purge
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error: argparse says so and exits 2
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from cds.knowledge.loader import RulesError
    from cds.store.storage import DatabaseUnavailable, explain_database_error

    prog = f"mskcds {args.command}"
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    except RulesError as exc:   # a broken rules/ file: its name and field, no traceback
        print(f"{prog}: rules error: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"{prog}: {explain_database_error(exc, _database_url())}", file=sys.stderr)
        return 2 if isinstance(exc, ArgumentError) else 1
    except BrokenPipeError:
        # The reader went away (`mskcds evaluate ... | head`): stop quietly. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _database_url() -> str | None:
    try:
        return Config.from_env().database_url
    except ConfigError:
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
