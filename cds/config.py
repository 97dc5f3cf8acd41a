"""Service configuration.

Every setting has an embedded default, can be set from an environment variable
``MSKCDS_<NAME>`` and can be overridden by the mapping given to
``cds.create_app(config)`` (keys either ``name`` or ``MSKCDS_NAME``).
The README lists them all; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

PREFIX = "MSKCDS_"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting has a value that cannot be used; start-up stops."""


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
    rules_dir: Path = REPO_ROOT / "rules"
    vitamin_d_profile: str = "endocrine-society-2011"
    sarcopenia_profile: str = "ewgsop2-2019"
    # --- HTTP edge ----------------------------------------------------------
    max_body_bytes: int = 5 * 1024 * 1024
    cors_origins: tuple[str, ...] = ("*",)
    # --- authentication (issue 4) ------------------------------------------
    require_auth: bool = True
    clients_file: Path | None = None
    public_base_url: str | None = None
    allowed_fhir_servers: tuple[str, ...] = ()
    jwt_leeway_seconds: int = 30
    jwks_cache_seconds: int = 3600
    # "memory" (per worker process!) or a SQLAlchemy URL shared by all workers/instances
    replay_cache_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'mskcds-replay.sqlite3'}"
    # --- FHIR server fallback ----------------------------------------------
    fhir_connect_timeout: float = 1.0
    fhir_read_timeout: float = 3.0
    fhir_total_budget: float = 4.0
    fhir_max_pages: int = 10
    fhir_max_workers: int = 4
    # --- feedback storage (issue 5) ----------------------------------------
    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'mskcds.sqlite3'}"
    feedback_unknown_card: str = "reject"  # or "flag"
    admin_summary_enabled: bool = False
    retention_days: int = 365
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

    def check(self) -> None:
        if self.max_body_bytes <= 0:
            raise ConfigError("MSKCDS_MAX_BODY_BYTES must be positive")
        if self.feedback_unknown_card not in {"reject", "flag"}:
            raise ConfigError("MSKCDS_FEEDBACK_UNKNOWN_CARD must be 'reject' or 'flag'")
        if self.jwt_leeway_seconds < 0 or self.jwt_leeway_seconds > 300:
            raise ConfigError("MSKCDS_JWT_LEEWAY_SECONDS must be between 0 and 300")
        if self.jwks_cache_seconds < 0:
            raise ConfigError("MSKCDS_JWKS_CACHE_SECONDS must not be negative")
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
