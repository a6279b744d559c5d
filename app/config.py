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

import functools
import os
import secrets
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from app import keyset
from app.auth import Tokens
from app.keyset import KeySet, PublicKey
from app.proxies import Network, parse_networks


class ConfigError(Exception):
    """Invalid or missing configuration; ``str(err)`` is the one line shown to the user."""


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


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _public_key_file(value: str) -> PublicKey:
    path = Path(value).expanduser()
    try:
        return keyset.key_from_pem(path.read_bytes())
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    except keyset.UnusableKey as err:
        raise ValueError(str(err)) from None


def _https_url(value: str) -> str:
    parts = urlsplit(value)
    # Keys fetched in the clear could be swapped by anyone on the path: https, except
    # from this very machine.
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")
    if not parts.netloc or not (parts.scheme == "https" or local):
        raise ValueError("must be an https URL like https://idp.example/.well-known/jwks.json "
                         "(http only from 127.0.0.1, ::1 or localhost)")
    return value


def _claim_name(value: str) -> str:
    if not value.strip() or value != value.strip():
        raise ValueError("must be a claim name like sub or email")
    return value


def setting(default: Any, parse: Callable[[str], Any], help: str,
            shown: str | None = None) -> Any:
    """A ``Config`` field: ``parse`` turns the environment's (or a flag's) text into the
    value or raises ``ValueError`` saying what is wrong; ``help`` is the one line the
    CLI's ``--help`` and docs/operations.md show; ``shown`` documents a default its value does
    not explain."""
    return field(default=default, metadata={"parse": parse, "help": help, "shown": shown})


@dataclass(frozen=True)
class Config:
    """Every setting, declared once: its type, default, parser and help. The environment
    variable is ``HERALD_`` + the name in capitals; the CLI flag ``--name-with-dashes``
    (on the commands that take it) shows the same help."""

    database_url: str | None = setting(
        None, _database_url, "PostgreSQL URL, libpq style; several hosts find the primary, "
        "e.g. postgresql://u@db1,db2/herald?target_session_attrs=read-write",
        shown="none: embedded PostgreSQL")
    secret: str = setting("", str, "JWT signing secret (HS256); required with an external "
                          "database", shown="generated in the data dir (embedded only)")
    api_key: str | None = setting(
        None, str, "API key for POST /api/notifications; unset = HTTP publishing disabled",
        shown="generated in the data dir (embedded only)")
    # LISTEN, the relay and its election need one long session on PostgreSQL itself;
    # when HERALD_DATABASE_URL goes through a transaction pooler, this one must not.
    bus_database_url: str | None = setting(
        None, _database_url, "a direct PostgreSQL URL for LISTEN, the relay and its "
        "election, when HERALD_DATABASE_URL goes through PgBouncer in transaction mode",
        shown="HERALD_DATABASE_URL")
    port: int = setting(8888, _port, "HTTP and WebSocket port (0 = any free port)")
    host: str = setting("", str, "bind address", shown="all interfaces")
    node: str = setting("", str, "node name (in welcome, logs, application_name)",
                        shown="hostname:port")
    allowed_origins: tuple[str, ...] = setting(
        (), _origins, "comma-separated browser origins allowed to open sockets and use the "
        "cookie; * = any", shown="same origin only")
    data_dir: Path = setting(Path.home() / ".herald", _path,
                             "embedded database and generated secrets", shown="~/.herald")
    dev: bool = setting(False, _flag, "the /login page (pick any user) and the send form; "
                        "never in production")
    hello_timeout: float = setting(10.0, _positive_float,
                                   "seconds to wait for hello before closing with 4408")
    bus_ping_interval: float = setting(5.0, _positive_float,
                                       "seconds between LISTEN liveness pings")
    shard_linger: float = setting(
        30.0, _positive_float, "seconds a node keeps listening to a shard after its last "
        "local user left (a quick reconnect keeps it)")
    ws_ping_interval: float = setting(
        25.0, _positive_float, "seconds between a socket's WebSocket pings (spread over the "
        "interval across sockets)")
    ws_pong_timeout: float = setting(
        10.0, _positive_float, "a socket whose ping goes unanswered this long is closed "
        "with 1001")
    max_frame_bytes: int = setting(64 * 1024, _positive_int,
                                   "largest client frame; bigger closes with 1009")
    max_pending_bytes: int = setting(
        1024 * 1024, _positive_int, "unsent bytes per socket: delivery pauses at half, the "
        "socket is closed with 4413 above it")
    slow_consumer_timeout: float = setting(
        30.0, _positive_float, "seconds a paused socket may go without draining before it "
        "is closed with 4413")
    frame_rate: float = setting(
        50.0, _positive_float, "client frames per second (token bucket; acks are exempt "
        "and coalesced); beyond: 4429")
    frame_burst: int = setting(200, _positive_int, "the token bucket's size (frame_rate)")
    ack_rate: float = setting(
        5.0, _positive_float, "acks per second per socket that acknowledge nothing new "
        "(token bucket; an ack of rows newly sent is always taken); beyond: 4429")
    ack_burst: int = setting(50, _positive_int, "the token bucket's size (ack_rate)")
    http_rate: float = setting(
        20.0, _positive_float, "history and read/archive requests per second per user on "
        "a node (token bucket); beyond: 429 with Retry-After")
    http_burst: int = setting(100, _positive_int, "the token bucket's size (http_rate)")
    max_publish_batch: int = setting(1000, _positive_int,
                                     "notifications per publish request")
    shutdown_grace: float = setting(
        5.0, _positive_float, "seconds a stopping node waits for connections to close, "
        "and for each other step of its shutdown (one that hangs is logged and left)")
    token_ttl: int = setting(3600, _positive_int, "lifetime in seconds of tokens Herald "
                             "mints (herald token, the dev login)")
    max_token_lifetime: int = setting(
        7 * 86400, _positive_int, "tokens whose exp is further away than this many "
        "seconds are refused (4401 / 401), and herald token mints none")
    trusted_proxies: tuple[Network, ...] = setting(
        parse_networks("127.0.0.1, ::1"), parse_networks, "addresses or networks whose "
        "X-Forwarded-For / X-Real-IP / X-Forwarded-Proto are believed (the load balancer); "
        "anybody else's are ignored", shown="127.0.0.1, ::1")
    jwt_audience: str | None = setting(None, str, "when set, tokens must carry this aud "
                                       "(and herald token adds it)")
    jwt_issuer: str | None = setting(None, str, "when set, tokens must carry this iss "
                                     "(and herald token adds it)")
    jwt_public_key: PublicKey | None = setting(
        None, _public_key_file, "PEM file of the identity provider's public key: tokens "
        "signed RS256, ES256 or EdDSA by it are accepted besides HS256 ones",
        shown="none")
    jwks_url: str | None = setting(
        None, _https_url, "the identity provider's JWKS (OpenID Connect jwks_uri): tokens "
        "signed RS256, ES256 or EdDSA by a key in it are accepted besides HS256 ones")
    jwks_cache_seconds: float = setting(
        600.0, _positive_float, "seconds a fetched JWKS is used before it is fetched again")
    jwks_min_refresh_seconds: float = setting(
        10.0, _positive_float, "at most one JWKS fetch per this many seconds, however many "
        "tokens name a key it does not hold")
    jwt_user_claim: str = setting(
        "sub", _claim_name, "the claim of the identity provider's tokens that names the "
        "user (Herald's own HS256 tokens always use sub)")
    max_connections: int = setting(20_000, _positive_int, "sessions (sockets that said "
                                   "hello) per node; beyond: error node_full, close 4503")
    max_waiting_sockets: int = setting(
        2_000, _positive_int, "sockets per node still waiting for their hello (they never "
        "count as sessions); beyond: the oldest waiting one is closed with 4408")
    max_waiting_sockets_per_ip: int = setting(
        500, _positive_int, "sockets from one client address still waiting for their "
        "hello; beyond: that address's oldest waiting one is closed with 4408")
    max_connections_per_user: int = setting(
        20, _positive_int, "sockets per user per node; beyond: error too_many_connections, "
        "close 4409")
    notify_queue_max: float = setting(
        0.5, _fraction, "/readyz fails while pg_notification_queue_usage() is above this "
        "fraction")
    log_format: str = setting("json", _log_format,
                              "json (one object per line) or text")
    relay_threshold: float = setting(
        800.0, _non_negative_float, "inserts per second above which the elected relay "
        "takes NOTIFY out of the writers' commits (0 = always)")
    relay_interval: float = setting(0.005, _positive_float,
                                    "seconds between the relay's polls while it batches")
    retention_days: float = setting(
        0.0, retention_days, "delete rows created more than this many days ago, and "
        "expired rows; 0 = keep everything", shown="0 (keep)")
    prune_interval: float = setting(
        60.0, _positive_float, "seconds between retention passes (on the relay's leader)")
    prune_batch: int = setting(1000, _positive_int, "rows per retention delete transaction")
    prune_pause: float = setting(0.1, _non_negative_float,
                                 "seconds between retention delete transactions")
    uvloop: bool = setting(
        True, _flag, "run the node on uvloop (~37% less CPU per wake-up than asyncio's "
        "loop, bench/wakeup.py); off = asyncio's own loop")
    heartbeat_interval: float = setting(
        2.0, _positive_float, "seconds between a node's heartbeats in herald.nodes")
    rebalance_rate: float = setting(
        0.03, _fraction_or_zero, "share of its sockets a node holding more than its share "
        "closes per second; 0 = never")

    @functools.cached_property
    def tokens(self) -> Tokens:
        """How this deployment mints and verifies user tokens (one instance: a JWKS key
        set keeps its cache in it)."""
        keys: KeySet | None = None
        if self.jwt_public_key is not None:
            keys = keyset.StaticKey(self.jwt_public_key)
        elif self.jwks_url is not None:
            keys = keyset.JwksKeys(self.jwks_url, ttl=self.jwks_cache_seconds,
                                   min_interval=self.jwks_min_refresh_seconds)
        return Tokens(self.secret, self.jwt_audience, self.jwt_issuer,
                      self.max_token_lifetime, keys, self.jwt_user_claim)

    @property
    def embedded(self) -> bool:
        """True when Herald runs its own PostgreSQL from ``data_dir`` (no URL given)."""
        return self.database_url is None


@dataclass(frozen=True)
class Setting:
    """What the environment, the CLI and the docs know of one ``Config`` field."""

    name: str
    env: str
    parse: Callable[[str], Any]
    help: str
    default: Any
    shown: str | None  # the default as documented, when its value says too little

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def documented_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if self.default is None or self.default == ():
            return "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


SETTINGS: dict[str, Setting] = {
    f.name: Setting(f.name, "HERALD_" + f.name.upper(), f.metadata["parse"],
                    f.metadata["help"], f.default, f.metadata["shown"])
    for f in fields(Config)
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
    for name, spec in SETTINGS.items():
        raw = env.get(spec.env)
        if raw is None or raw == "":
            continue
        try:
            values[name] = spec.parse(raw)
        except ValueError as err:
            raise ConfigError(f"{spec.env}={raw!r} is invalid: {err}") from None
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, str) and name in SETTINGS:
            try:
                value = SETTINGS[name].parse(value)
            except ValueError as err:
                raise ConfigError(f"{SETTINGS[name].flag} {value!r} is invalid: {err}") from None
        values[name] = value

    provider = [name for name in ("jwt_public_key", "jwks_url") if values.get(name) is not None]
    if len(provider) == 2:
        raise ConfigError("HERALD_JWT_PUBLIC_KEY and HERALD_JWKS_URL are exclusive: "
                          "name the identity provider's keys one way")
    if provider and not (values.get("jwt_issuer") and values.get("jwt_audience")):
        # A provider signs tokens for every application of the tenant (and some share
        # their keys between tenants): without iss and aud, any of them would do here.
        raise ConfigError(f"HERALD_{provider[0].upper()} needs HERALD_JWT_ISSUER and "
                          "HERALD_JWT_AUDIENCE: the provider's tokens must be ones it "
                          "issued for Herald")
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
