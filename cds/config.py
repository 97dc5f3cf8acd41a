"""Service configuration.

Every setting has an embedded default, can be set from an environment variable
``MSKCDS_<NAME>`` and can be overridden by the mapping given to
``cds.create_app(config)`` (keys either ``name`` or ``MSKCDS_NAME``).
The README lists them all; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

PREFIX = "MSKCDS_"
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where a built wheel carries the repository's top-level rules/ (see setup.py).
PACKAGED_RULES = "_rules"


class ConfigError(ValueError):
    """A setting has a value that cannot be used; start-up stops."""


def default_rules_dir() -> Path:
    """The clinical rules shipped with this installation.

    An installed wheel carries them inside the package (``cds/_rules``, found with
    importlib.resources); a source checkout or an editable install reads the
    repository's top-level ``rules/``. ``MSKCDS_RULES_DIR`` overrides both.
    """
    packaged = resources.files("cds") / PACKAGED_RULES
    if isinstance(packaged, Path) and (packaged / "citations.yaml").is_file():
        return packaged
    return REPO_ROOT / "rules"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the service writes by default (the SQLite feedback store and replay cache):
    the user's data directory, ``$XDG_DATA_HOME/mskcds`` (``~/.local/share/mskcds``).

    Not the current directory: every command (the server, a cron ``mskcds purge``, a
    ``feedback-report`` run from elsewhere) must meet the same database file. Never the
    install folder, which may be read-only and is replaced by an upgrade.
    """
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME", "").strip()
    if base and Path(base).is_absolute():
        return Path(base) / "mskcds"
    try:
        return Path.home() / ".local" / "share" / "mskcds"
    except RuntimeError:  # no HOME and no passwd entry (some containers)
        raise ConfigError("MSKCDS_DATA_DIR is not set and there is no home directory to put "
                          "the data in: set MSKCDS_DATA_DIR to a writable directory") from None


def default_workers() -> int:
    """``mskcds serve``'s worker count: one process per CPU this process may run on
    (chosen by measurement: README, Speed)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Config:
    # --- clinical knowledge -------------------------------------------------
    rules_dir: Path = field(default_factory=default_rules_dir)
    vitamin_d_profile: str = "endocrine-society-2024"
    sarcopenia_profile: str = "ewgsop2-2019"
    # --- HTTP edge ----------------------------------------------------------
    # 10,000 Observations (a long history, ~6.5 MB as JSON) must fit.
    max_body_bytes: int = 16 * 1024 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    # Seconds a client has to send its request line and headers / its whole request; the
    # serving worker reads requests without giving them a thread, so a slow client holds
    # only a buffer until then (408 after).
    request_header_timeout: float = 10.0
    request_timeout: float = 60.0
    # --- authentication (issue 4) ------------------------------------------
    require_auth: bool = True
    clients_file: Path | None = None
    public_base_url: str | None = None
    allowed_fhir_servers: tuple[str, ...] = ()
    jwt_leeway_seconds: int = 30
    #: longest accepted token: exp - iat and exp - now (CDS Hooks: short-lived, 5 minutes)
    jwt_max_lifetime_seconds: int = 300
    jwks_cache_seconds: int = 3600
    #: one total deadline per JWKS fetch (connect, headers and body together)
    jwks_fetch_timeout: float = 2.0
    #: per-client rate limit: a refetch for an unknown kid, or after a failure, at most this often
    jwks_min_refresh_seconds: float = 30.0
    #: addresses whose X-Forwarded-* headers gunicorn may trust (mskcds serve); none by default
    trusted_proxies: tuple[str, ...] = ()
    #: `mskcds serve` with authentication off on a non-loopback address (never in production)
    insecure_allow_remote: bool = False
    # "memory" (per worker process!) or a SQLAlchemy URL shared by all workers/instances;
    # "" = the SQLite file mskcds-replay.sqlite3 in data_dir
    replay_cache_url: str = ""
    # --- FHIR server fallback ----------------------------------------------
    fhir_connect_timeout: float = 1.0
    fhir_read_timeout: float = 3.0
    fhir_total_budget: float = 4.0
    fhir_max_pages: int = 10
    #: concurrent fetches per call: at least the patient-record service's prefetch keys (6),
    #: so a call with no prefetch waits for one round trip, not two
    fhir_max_workers: int = 8
    #: bytes read from the FHIR server per call, all keys and pages together (16 MiB)
    fhir_max_call_bytes: int = 16 * 1024 * 1024
    # _count asked of the FHIR server in fallback searches: 1,000 Observations in one page
    fhir_page_size: int = 1000
    # --- feedback storage (issue 5) ----------------------------------------
    # --- where defaults write ("" URLs above and below: a SQLite file in data_dir) -------
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str = ""
    feedback_unknown_card: str = "reject"  # or "flag"
    admin_summary_enabled: bool = False
    # --- pages (issue 14) ---------------------------------------------------
    # POST /preview renders a request's cards as HTML (behind authentication like a service
    # call); off by default. GET /rules (rule documentation) is always served.
    preview_enabled: bool = False
    retention_days: int = 365
    # Issued-card records queued per worker, written off the request path (and kept while
    # the database is down); past this many, records are dropped, counted and logged.
    # 0: write each record in its request.
    issued_queue_max: int = 20_000
    # --- operating ----------------------------------------------------------
    # Who may read /metrics: CIDR networks, "any" or "none" (see cds.http.ops)
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # --- outgoing checks ----------------------------------------------------
    # Re-check every card against the CDS Hooks schema before it leaves (~0.4 ms per call).
    # Off in production: cards come from templates checked at start-up; the test suite
    # turns it on so every card it sees (examples, fuzzed facts) is checked.
    check_cards: bool = False
    # --- logging ------------------------------------------------------------
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, overrides: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> "Config":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        for name, f in known.items():
            raw = environ.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, f, raw)
        extra: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            name = key[len(PREFIX):].lower() if key.upper().startswith(PREFIX) else key
            if name in known:
                values[name] = _coerce(name, known[name], value) if isinstance(value, str) else value
            else:
                extra[name] = value
        if extra:
            values["extra"] = extra
        try:
            config = cls(**values)
        except TypeError as exc:  # pragma: no cover - programming error
            raise ConfigError(str(exc)) from exc
        config.check()
        return config

    def __post_init__(self) -> None:
        # Derived defaults: SQLite files in data_dir, unless a URL is given.
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        if not self.database_url:
            object.__setattr__(self, "database_url",
                               f"sqlite:///{Path(self.data_dir) / 'mskcds.sqlite3'}")
        if not self.replay_cache_url:
            object.__setattr__(self, "replay_cache_url",
                               f"sqlite:///{Path(self.data_dir) / 'mskcds-replay.sqlite3'}")

    def check(self) -> None:
        for net in self.metrics_allow:
            if net not in ("any", "none"):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(f"MSKCDS_METRICS_ALLOW: {net!r} is not a network "
                                      "(e.g. 10.0.0.0/8), 'any' or 'none'") from None
        if self.max_body_bytes <= 0:
            raise ConfigError("MSKCDS_MAX_BODY_BYTES must be positive")
        if self.feedback_unknown_card not in {"reject", "flag"}:
            raise ConfigError("MSKCDS_FEEDBACK_UNKNOWN_CARD must be 'reject' or 'flag'")
        if self.jwt_leeway_seconds < 0 or self.jwt_leeway_seconds > 300:
            raise ConfigError("MSKCDS_JWT_LEEWAY_SECONDS must be between 0 and 300")
        if self.jwks_cache_seconds < 0:
            raise ConfigError("MSKCDS_JWKS_CACHE_SECONDS must not be negative")
        if self.jwt_max_lifetime_seconds <= 0:
            raise ConfigError("MSKCDS_JWT_MAX_LIFETIME_SECONDS must be positive")
        if not 0 < self.jwks_fetch_timeout <= 30:
            raise ConfigError("MSKCDS_JWKS_FETCH_TIMEOUT must be between 0 and 30 seconds")
        if self.jwks_min_refresh_seconds < 0:
            raise ConfigError("MSKCDS_JWKS_MIN_REFRESH_SECONDS must not be negative")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy)
            except ValueError:
                raise ConfigError(f"MSKCDS_TRUSTED_PROXIES: {proxy!r} is not an IP address or "
                                  "network (e.g. 10.0.0.5 or 10.0.0.0/24)") from None
        if self.fhir_max_call_bytes <= 0:
            raise ConfigError("MSKCDS_FHIR_MAX_CALL_BYTES must be positive")
        if self.request_header_timeout <= 0 or self.request_timeout <= 0:
            raise ConfigError("MSKCDS_REQUEST_HEADER_TIMEOUT and MSKCDS_REQUEST_TIMEOUT must be "
                              "positive")
        if self.issued_queue_max < 0:
            raise ConfigError("MSKCDS_ISSUED_QUEUE_MAX must not be negative")
        if self.fhir_page_size < 1:
            raise ConfigError("MSKCDS_FHIR_PAGE_SIZE must be at least 1")
        for name in ("fhir_connect_timeout", "fhir_read_timeout", "fhir_total_budget"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"MSKCDS_{name.upper()} must be positive")

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _coerce(name: str, f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    try:
        if "bool" in kind:
            return _bool(raw)
        if "tuple" in kind:
            return _list(raw)
        if "Path" in kind:
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return raw
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()}: {exc}") from exc
