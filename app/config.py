"""Every Herald setting in one place: environment variables, overridden by CLI flags.

``load_config()`` validates everything up front and raises ``ConfigError`` with one
human-readable line; the CLI prints that line and exits with status 2, never a traceback.

Secrets without configuration: when no database URL is given (embedded PostgreSQL),
the secret and API key are generated once and kept in ``HERALD_DATA_DIR`` so that
``herald serve``, ``herald token`` and ``herald tail`` in different terminals agree.
With an external database, ``HERALD_SECRET`` is required: nodes of a cluster must share
it, and a per-machine random secret would fail silently in the worst way.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from app.auth import Tokens


class ConfigError(Exception):
    """Invalid or missing configuration; ``str(err)`` is the one line shown to the user."""


@dataclass(frozen=True)
class Config:
    database_url: str | None
    secret: str
    api_key: str | None
    # LISTEN, the relay and its election need one long session on PostgreSQL itself;
    # when HERALD_DATABASE_URL goes through a transaction pooler, this one must not.
    bus_database_url: str | None = None
    port: int = 8888
    host: str = ""
    node: str = ""
    allowed_origins: tuple[str, ...] = ()
    data_dir: Path = field(default_factory=lambda: Path.home() / ".herald")
    dev: bool = False
    hello_timeout: float = 10.0
    bus_ping_interval: float = 5.0
    ws_ping_interval: float = 25.0
    ws_pong_timeout: float = 10.0
    max_frame_bytes: int = 64 * 1024
    max_pending_bytes: int = 1024 * 1024
    slow_consumer_timeout: float = 30.0
    frame_rate: float = 50.0
    frame_burst: int = 200
    max_publish_batch: int = 1000
    shutdown_grace: float = 5.0
    token_ttl: int = 3600
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    max_connections: int = 20_000
    max_connections_per_user: int = 20
    notify_queue_max: float = 0.5
    log_format: str = "json"
    relay_threshold: float = 800.0
    relay_interval: float = 0.005
    retention_days: float = 0.0
    prune_interval: float = 60.0
    prune_batch: int = 1000
    prune_pause: float = 0.1
    uvloop: bool = True
    heartbeat_interval: float = 2.0
    rebalance_rate: float = 0.03

    @property
    def tokens(self) -> Tokens:
        """How this deployment mints and verifies user tokens."""
        return Tokens(self.secret, self.jwt_audience, self.jwt_issuer)

    @property
    def embedded(self) -> bool:
        """True when Herald runs its own PostgreSQL from ``data_dir`` (no URL given)."""
        return self.database_url is None


# name -> (environment variable, parser)
def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError("must be a number >= 0")
    return number


# A century: beyond it a cutoff date leaves the calendar PostgreSQL and Python share.
MAX_RETENTION_DAYS = 36_500


def retention_days(value: str) -> float:
    """Days of retention: 0 (keep everything) up to ``MAX_RETENTION_DAYS``."""
    number = float(value)
    if not 0 <= number <= MAX_RETENTION_DAYS:
        raise ValueError(f"must be a number of days from 0 to {MAX_RETENTION_DAYS}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be > 0")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be between 0 and 65535")
    return number


def _origins(value: str) -> tuple[str, ...]:
    items = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
    for origin in items:
        if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
            raise ValueError(f"{origin!r} is not an origin like https://shop.example")
    return items


def _database_url(value: str) -> str:
    if urlsplit(value).scheme not in ("postgres", "postgresql", "postgresql+asyncpg"):
        raise ValueError("must start with postgresql://")
    return value


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("must be a fraction in (0, 1]")
    return number


def _fraction_or_zero(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 1:
        raise ValueError("must be a fraction in [0, 1]")
    return number


def _log_format(value: str) -> str:
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "database_url": ("HERALD_DATABASE_URL", _database_url),
    "bus_database_url": ("HERALD_BUS_DATABASE_URL", _database_url),
    "secret": ("HERALD_SECRET", str),
    "api_key": ("HERALD_API_KEY", str),
    "port": ("HERALD_PORT", _port),
    "host": ("HERALD_HOST", str),
    "node": ("HERALD_NODE", str),
    "allowed_origins": ("HERALD_ALLOWED_ORIGINS", _origins),
    "data_dir": ("HERALD_DATA_DIR", lambda v: Path(v).expanduser()),
    "dev": ("HERALD_DEV", _flag),
    "hello_timeout": ("HERALD_HELLO_TIMEOUT", _positive_float),
    "bus_ping_interval": ("HERALD_BUS_PING_INTERVAL", _positive_float),
    "ws_ping_interval": ("HERALD_WS_PING_INTERVAL", _positive_float),
    "ws_pong_timeout": ("HERALD_WS_PONG_TIMEOUT", _positive_float),
    "max_frame_bytes": ("HERALD_MAX_FRAME_BYTES", _positive_int),
    "max_pending_bytes": ("HERALD_MAX_PENDING_BYTES", _positive_int),
    "slow_consumer_timeout": ("HERALD_SLOW_CONSUMER_TIMEOUT", _positive_float),
    "frame_rate": ("HERALD_FRAME_RATE", _positive_float),
    "frame_burst": ("HERALD_FRAME_BURST", _positive_int),
    "max_publish_batch": ("HERALD_MAX_PUBLISH_BATCH", _positive_int),
    "shutdown_grace": ("HERALD_SHUTDOWN_GRACE", _positive_float),
    "token_ttl": ("HERALD_TOKEN_TTL", _positive_int),
    "jwt_audience": ("HERALD_JWT_AUDIENCE", str),
    "jwt_issuer": ("HERALD_JWT_ISSUER", str),
    "max_connections": ("HERALD_MAX_CONNECTIONS", _positive_int),
    "max_connections_per_user": ("HERALD_MAX_CONNECTIONS_PER_USER", _positive_int),
    "notify_queue_max": ("HERALD_NOTIFY_QUEUE_MAX", _fraction),
    "log_format": ("HERALD_LOG_FORMAT", _log_format),
    "relay_threshold": ("HERALD_RELAY_THRESHOLD", _non_negative_float),
    "relay_interval": ("HERALD_RELAY_INTERVAL", _positive_float),
    "retention_days": ("HERALD_RETENTION_DAYS", retention_days),
    "prune_interval": ("HERALD_PRUNE_INTERVAL", _positive_float),
    "prune_batch": ("HERALD_PRUNE_BATCH", _positive_int),
    "prune_pause": ("HERALD_PRUNE_PAUSE", _non_negative_float),
    "uvloop": ("HERALD_UVLOOP", _flag),
    "heartbeat_interval": ("HERALD_HEARTBEAT_INTERVAL", _positive_float),
    "rebalance_rate": ("HERALD_REBALANCE_RATE", _fraction_or_zero),
}


def _read_or_create(path: Path, nbytes: int) -> str:
    """Return the secret stored at ``path``, creating it (mode 0600) on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def load_config(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    need_secret: bool = True,
) -> Config:
    """Build a validated ``Config`` from ``env`` (default ``os.environ``) and flag ``overrides``.

    Flags win over the environment; ``None`` in ``overrides`` means "flag not given".
    Commands that never sign or verify tokens (migrate, send) pass ``need_secret=False``.
    Raises ``ConfigError`` naming the variable and what is wrong with it.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, (var, parse) in SETTINGS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as err:
            raise ConfigError(f"{var}={raw!r} is invalid: {err}") from None
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, str) and name in SETTINGS:
            try:
                value = SETTINGS[name][1](value)
            except ValueError as err:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r} is invalid: {err}") from None
        values[name] = value

    data_dir = values.get("data_dir") or Path.home() / ".herald"
    values["data_dir"] = data_dir
    embedded = values.get("database_url") is None
    if "secret" not in values and not need_secret:
        values["secret"] = ""
    elif "secret" not in values:
        if not embedded:
            raise ConfigError(
                "HERALD_SECRET is required when HERALD_DATABASE_URL is set "
                "(every node of a cluster must sign tokens with the same secret)"
            )
        values["secret"] = _read_or_create(data_dir / "secret", 32)
    if "api_key" not in values and embedded:
        values["api_key"] = _read_or_create(data_dir / "api_key", 24)
    values.setdefault("api_key", None)
    values.setdefault("database_url", None)
    port = values.get("port", 8888)
    values.setdefault("node", f"{socket.gethostname()}:{port}")
    return Config(**values)
