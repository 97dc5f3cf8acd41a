"""mskcds command line: serve, evaluate a request file, make client keys and tokens, manage feedback storage."""
from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

from cds.config import Config, ConfigError
from cds.errors import ServiceError


def _cmd_serve(args: argparse.Namespace) -> int:
    config = Config.from_env()  # fail fast, before gunicorn forks, on a bad setting
    if not config.require_auth:
        print("mskcds: WARNING: authentication is OFF (MSKCDS_REQUIRE_AUTH=false). "
              "Local use only.", file=sys.stderr)
    else:
        from cds import logs
        from cds.security.auth import Authenticator

        logs.configure(config.log_level)
        auth = Authenticator(config)  # reads and checks the trusted-clients file, or stops here
        print(f"mskcds: authentication on, {len(auth.clients)} trusted client(s) from "
              f"{config.clients_file}", file=sys.stderr)
    argv = [sys.executable, "-m", "gunicorn",
            "--bind", f"{args.host}:{args.port}",
            "--workers", str(args.workers),
            "--worker-class", "gthread", "--threads", str(args.threads),
            "--timeout", "30", "--graceful-timeout", "10",
            "--access-logfile", "-" if args.access_log else "/dev/null",
            "--preload", "--no-control-socket",
            "cds.wsgi:application"]
    print(f"mskcds: serving on http://{args.host}:{args.port}/cds-services", file=sys.stderr)
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover


def request_from_bundle(bundle: dict[str, Any], hook: str, templates: dict[str, str]) -> dict[str, Any]:
    """Wrap a FHIR Bundle as a CDS Hooks request: the Patient and every other resource as prefetch."""
    resources = [e.get("resource") for e in bundle.get("entry", []) if isinstance(e, dict)]
    resources = [r for r in resources if isinstance(r, dict)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not patients[0].get("id"):
        raise SystemExit("mskcds evaluate: the Bundle must hold exactly one Patient with an id")
    others = [r for r in resources if r.get("resourceType") != "Patient"]
    prefetch: dict[str, Any] = {"patient": patients[0]}
    # Everything else goes in one searchset per remaining template key, by resource type.
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in others:
        by_type.setdefault(r["resourceType"], []).append(r)
    for key, template in templates.items():
        if key == "patient":
            continue
        rtype = template.split("?", 1)[0].split("/", 1)[0]
        items = by_type.get(rtype, [])
        prefetch[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(items),
                         "entry": [{"resource": r} for r in items]} if items else None
    return {"hook": hook, "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/mskcds-cli", "patientId": patients[0]["id"]},
            "prefetch": prefetch}


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cds.engine import Engine

    config = Config.from_env()
    engine = Engine(config)
    service = engine.service(args.service)
    try:
        document = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"mskcds evaluate: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    if isinstance(document, dict) and document.get("resourceType") == "Bundle":
        if not args.hook:
            print("mskcds evaluate: a FHIR Bundle needs --hook (e.g. --hook patient-view)",
                  file=sys.stderr)
            return 2
        document = request_from_bundle(document, args.hook, dict(service.prefetch))
    try:
        result = engine.call(service.id, document, allowed_fhir_servers=config.allowed_fhir_servers)
        body, status = result.response, 200
    except ServiceError as exc:
        body, status = exc.body(), exc.status
    json.dump(body, sys.stdout, indent=2 if args.pretty else None, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if status == 200 else 1


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from cds.security.auth import generate_key, public_jwks

    key = generate_key(args.alg)
    kid = args.kid or str(uuid.uuid4())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(args.private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    Path(args.jwks).write_text(json.dumps(public_jwks(key, kid, args.alg), indent=2) + "\n",
                               encoding="utf-8")
    print(f"mskcds keygen: private key {args.private} (keep it with the EHR), public JWKS "
          f"{args.jwks} (kid {kid}, {args.alg})", file=sys.stderr)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from cds.security.auth import load_private_key, mint_token

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
    parser = argparse.ArgumentParser(prog="mskcds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the CDS Hooks endpoints with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=4)
    serve.add_argument("--access-log", action="store_true", help="gunicorn access log to stdout "
                       "(off by default: our own request log carries no patient data)")
    serve.set_defaults(func=_cmd_serve)

    evaluate = sub.add_parser("evaluate", help="evaluate a CDS Hooks request (or FHIR Bundle) file "
                              "and print the response JSON the HTTP endpoint would return")
    evaluate.add_argument("file")
    evaluate.add_argument("--hook", help="with a FHIR Bundle: the hook to simulate (patient-view)")
    evaluate.add_argument("--service", default="bone-muscle-health")
    evaluate.add_argument("--pretty", action="store_true")
    evaluate.set_defaults(func=_cmd_evaluate)

    keygen = sub.add_parser("keygen", help="make a CDS Client key pair: private PEM + public JWKS "
                            "(for a smoke test, or an EHR that has none)")
    keygen.add_argument("--alg", default="ES384", choices=["ES256", "ES384", "ES512", "RS256",
                                                            "RS384", "RS512", "PS256", "PS384",
                                                            "PS512"])
    keygen.add_argument("--kid", help="key id (default: a random UUID)")
    keygen.add_argument("--private", required=True, help="where to write the private key (PEM)")
    keygen.add_argument("--jwks", required=True, help="where to write the public JWKS (JSON)")
    keygen.set_defaults(func=_cmd_keygen)

    token = sub.add_parser("token", help="sign a CDS Hooks client JWT, as an EHR would, and "
                           "print it (for: Authorization: Bearer <token>)")
    token.add_argument("--key", required=True, help="private key: PEM, private JWK or JWKS")
    token.add_argument("--iss", required=True, help="issuer, as in the trusted-clients file")
    token.add_argument("--aud", required=True, help="the full URL of the endpoint to call, "
                       "e.g. http://127.0.0.1:8080/cds-services/bone-muscle-health")
    token.add_argument("--kid", help="key id (default: the JWK's kid)")
    token.add_argument("--alg", help="default: from the key (ES384 for P-384, RS384 for RSA)")
    token.add_argument("--jku", help="JWKS URL to name in the header (must be the client's "
                       "configured jwks_url)")
    token.add_argument("--tenant")
    token.add_argument("--lifetime", type=int, default=300, help="seconds (default 300)")
    token.set_defaults(func=_cmd_token)

    from cds.store.reporting import register as register_storage_commands
    register_storage_commands(sub)  # migrate, feedback-report, purge (issue 5)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from cds.knowledge.loader import RulesError

    try:
        return int(args.func(args) or 0)
    except RulesError as exc:   # a broken rules/ file: its name and field, no traceback
        print(f"mskcds: rules error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"mskcds: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
