"""Command-line tools for the feedback store: ``migrate``, ``feedback-report``, ``purge``.

``cds.cli`` registers these subcommands with :func:`register`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Mapping

from cds.config import Config, ConfigError
from cds.errors import ServiceError

if TYPE_CHECKING:  # the store (SQLAlchemy) is imported only by the commands that use it
    from cds.store.storage import SqlStore

TOP_REASONS = 3


def _store(config: Config, *, migrate_now: bool = True) -> SqlStore:
    from cds.store.storage import open_store

    return open_store(config, migrate_now=migrate_now)


def known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from cds.store.migrate import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _cmd_migrate(args: argparse.Namespace) -> int:
    from alembic.util import CommandError

    from cds.store.db import describe_url
    from cds.store.migrate import migrate

    config = Config.from_env()
    known = known_revisions()
    if args.revision not in {"head", "heads", *known}:
        # Checked before connecting: alembic would say so only after a 60-line traceback.
        print(f"mskcds migrate: unknown --revision {args.revision[:40]!r}: give one of "
              f"{', '.join(known)} or 'head'", file=sys.stderr)
        return 2
    try:
        revision = migrate(config.database_url, args.revision)
    except CommandError as exc:  # e.g. the database is at a revision this version lacks
        print(f"mskcds migrate: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"mskcds migrate: {describe_url(config.database_url)} is at revision {revision}")
    return 0


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render_table(report: Mapping[str, Mapping[str, Any]], period: str) -> str:
    """The report as a plain-text table (one row per finding)."""
    headers = ["finding", "issued", "accepted", "overridden", "acceptance", "top override reasons"]
    rows = []
    for finding, data in report.items():
        reasons = list(data["override_reasons"].items())[:TOP_REASONS]
        rows.append([finding, str(data["issued"]), str(data["accepted"]), str(data["overridden"]),
                     _rate(data["acceptance_rate"]),
                     ", ".join(f"{label} ({n})" for label, n in reasons) or "-"])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    numeric = {1, 2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    out = [f"Feedback on cards issued {period}", line(headers),
           line(["-" * w for w in widths])]
    out += [line(r) for r in rows] or ["(no cards issued in this period)"]
    return "\n".join(out) + "\n"


def _cmd_report(args: argparse.Namespace) -> int:
    from cds.store.storage import parse_range

    config = Config.from_env()
    try:
        rng = parse_range(args.date_from, args.date_to)
    except ServiceError as exc:
        for issue in exc.issues:
            print(f"mskcds feedback-report: --{issue.diagnostics}", file=sys.stderr)
        return 2
    report = _store(config).report(rng)
    if args.format == "json":
        json.dump(report, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(report, rng.describe()))
    return 0


def _cmd_purge(args: argparse.Namespace) -> int:
    config = Config.from_env()
    days = args.days if args.days is not None else config.retention_days
    if days < 1:
        print("mskcds purge: retention must be at least 1 day", file=sys.stderr)
        return 2
    result = _store(config).purge(days, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"mskcds purge: {verb} {result['issued_cards']} issued-card records older than "
          f"{days} days (before {result['cutoff']}) and {result['feedback']} feedback reports")
    return 0


def register(sub: Any, **parser_options: Any) -> None:
    """Add the storage subcommands to the ``mskcds`` argument parser."""
    migrate = sub.add_parser("migrate", help="create or upgrade the feedback database schema "
                             "(MSKCDS_DATABASE_URL); the server also does this at start-up",
                             **parser_options)
    migrate.add_argument("--revision", default="head", help="schema revision to upgrade to "
                         "(e.g. 0001; 'head' is the newest)")
    migrate.set_defaults(func=_cmd_migrate)

    report = sub.add_parser("feedback-report", help="per finding: cards issued, accepted, "
                            "overridden, acceptance rate and top override reasons",
                            **parser_options)
    report.add_argument("--from", dest="date_from", metavar="DATE",
                        help="first day (YYYY-MM-DD, UTC) or an RFC 3339 date-time "
                        "(default: the first record)")
    report.add_argument("--to", dest="date_to", metavar="DATE",
                        help="last day, included (YYYY-MM-DD, UTC) or an RFC 3339 date-time "
                        "(default: now)")
    report.add_argument("--format", choices=["table", "json"], default="table",
                        help="plain-text table or JSON")
    report.set_defaults(func=_cmd_report)

    purge = sub.add_parser("purge", help="delete issued-card records older than the retention "
                           "period (MSKCDS_RETENTION_DAYS) together with their feedback",
                           **parser_options)
    purge.add_argument("--days", type=int, help="retention in days (default: "
                       "MSKCDS_RETENTION_DAYS, 365 unless set)")
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    purge.set_defaults(func=_cmd_purge)


__all__ = ["register", "render_table", "ConfigError"]
