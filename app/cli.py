"""The ``herald`` command: serve, migrate, token, send, tail, prune, status, and from a
source checkout cluster and bench (``herald_dev/`` and ``bench/``, not installed).

Each command is thin: it builds a ``Config`` (environment, overridden by flags), resolves
the database (external URL, or the embedded one in ``HERALD_DATA_DIR``) and calls into
the package. Any expected failure ends with one ``herald: error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Coroutine, NoReturn, Sequence

import asyncpg

from app import __version__, db, gcpolicy, protocol, publish, schema, tasks
from app.config import (
    MAX_RETENTION_DAYS,
    SETTINGS,
    Config,
    ConfigError,
    load_config,
    retention_days,
)
from app.logs import setup_logging

log = logging.getLogger("herald")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _help(name: str) -> str:
    """The help a setting declares in ``app.config``, with its variable and default."""
    spec = SETTINGS[name]
    return f"{spec.help} (env {spec.env}; default {spec.documented_default})".replace("%", "%%")


def _config_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Flags for these settings (a switch for a boolean one)."""
    for name in names:
        if isinstance(SETTINGS[name].default, bool):
            parser.add_argument(SETTINGS[name].flag, dest=name, action="store_true",
                                default=None, help=_help(name))
        else:
            parser.add_argument(SETTINGS[name].flag, dest=name, default=None,
                                help=_help(name))


def _add_cluster(sub: "argparse._SubParsersAction[_Parser]") -> None:
    cluster = sub.add_parser(
        "cluster", help="run N nodes behind nginx locally (development)",
        description="Start N `herald serve` nodes behind nginx (docker/nginx.conf) on one "
        "port, on HERALD_DATABASE_URL or the embedded PostgreSQL. Ctrl-C stops all of it. "
        "A developer command: it runs herald_dev/cluster.py from a source checkout.")
    cluster.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    cluster.add_argument("--port", type=int, default=8080, help="nginx port (default 8080)")
    _config_flags(cluster, *CLUSTER_SETTINGS, "dev")


def _add_bench(sub: "argparse._SubParsersAction[_Parser]") -> None:
    bench = sub.add_parser(
        "bench", help="run the benchmarks (Herald, the Socket.IO peer, pgbench ceiling)",
        description="Run bench/ from a source checkout (pip install -e '.[bench]') and write "
        "docs/benchmarks.md and its chart. Everything else goes to `python -m bench`.",
        add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="herald",
        description="Real-time notification push: INSERT a row in PostgreSQL, the user's "
        "browser gets it over a WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"herald {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    serve = sub.add_parser("serve", help="run a node (embedded PostgreSQL if no URL)",
                           description="Run a Herald node. Flags override environment.")
    _config_flags(serve, "database_url", "bus_database_url", "secret", "api_key", "port",
                  "host", "node", "allowed_origins", "data_dir", "dev", "log_format")
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    migrate = sub.add_parser("migrate", help="upgrade the database schema to head",
                             description="Same as `alembic upgrade head`.")
    _config_flags(migrate, "database_url", "data_dir")

    token = sub.add_parser("token", help="print a user JWT signed with HERALD_SECRET",
                           description="Print a JWT (HS256) whose sub is USER.")
    token.add_argument("user", metavar="USER")
    token.add_argument("--ttl", type=int, default=None, help=_help("token_ttl"))
    _config_flags(token, "database_url", "secret", "data_dir")

    send = sub.add_parser("send", help="insert a notification for USER",
                          description="Insert one notification (an INSERT, as any backend "
                          "would do); prints its id and seq as JSON.")
    send.add_argument("user", metavar="USER")
    send.add_argument("title", metavar="TITLE")
    send.add_argument("--body", default=None)
    send.add_argument("--data", default=None, help="a JSON object")
    send.add_argument("--link", default=None, help="http(s) URL or /path")
    send.add_argument("--category", default=None, help="a label of 1-64 characters")
    send.add_argument("--group-key", default=None, metavar="K",
                      help="a collapse key of 1-200 characters: an inbox shows one item per "
                      "unread group, and reading it reads the group")
    send.add_argument("--expires-at", default=None, metavar="WHEN",
                      help="ISO 8601 date-time after which it is never pushed, listed or "
                      "counted (e.g. 2026-12-01T18:00:00Z)")
    _config_flags(send, "database_url", "data_dir")

    prune = sub.add_parser(
        "prune", help="delete old and expired notifications now (one pass)",
        description="Delete, in small batches, every notification created more than DAYS "
        "days ago (--older-than, else HERALD_RETENTION_DAYS; neither = none by age) and "
        "every expired one. Prints how many rows were deleted. Per-user seqs never "
        "restart.")
    prune.add_argument("--older-than", default=None, metavar="DAYS",
                       help="age in days (a positive number, e.g. 30 or 0.5)")
    _config_flags(prune, "database_url", "data_dir")

    status = sub.add_parser(
        "status", help="show the cluster: nodes, sockets, relay, NOTIFY queue, backlog",
        description="Print every node's last heartbeat (sockets, start, relay leader), the "
        "relay's lease, PostgreSQL's NOTIFY queue usage and the oldest notification not "
        "yet delivered to any client.")
    _config_flags(status, "database_url", "data_dir")

    tail = sub.add_parser("tail", help="print USER's notifications live",
                          description="Connect to a node as USER and print notifications "
                          "as they arrive; reconnects and resumes on its own.")
    tail.add_argument("user", metavar="USER")
    tail.add_argument("--url", default=None,
                      help="WebSocket URL (default ws://127.0.0.1:$HERALD_PORT/ws)")
    tail.add_argument("--last-seq", type=int, default=None,
                      help="resume after this seq (default: everything undelivered)")
    tail.add_argument("--json", action="store_true", help="print raw JSON frames")
    tail.add_argument("--ack", action="store_true",
                      help="acknowledge what is printed (marks it delivered)")
    _config_flags(tail, "database_url", "secret", "port", "data_dir")
    _add_cluster(sub)
    _add_bench(sub)
    return parser


def _load(args: argparse.Namespace, names: Sequence[str]) -> Config:
    return load_config(overrides={n: getattr(args, n, None) for n in names},
                       need_secret="secret" in names)


def _database(config: Config) -> str:
    if config.database_url:
        return config.database_url
    try:
        return db.start_embedded(config.data_dir)
    except RuntimeError as err:
        raise CliError(str(err)) from None


# --- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import HeraldServer

    config = _load(args, ["database_url", "bus_database_url", "secret", "api_key", "port",
                          "host", "node", "allowed_origins", "data_dir", "dev", "log_format"])
    setup_logging(args.log_level, config.log_format, config.node)
    url = _database(config)
    if config.embedded:
        schema.upgrade(url)
        url = schema.embedded_node_url(url)  # the node itself is no superuser

    async def run() -> None:
        server = HeraldServer(config, url)
        await server.start()
        collector = asyncio.create_task(gcpolicy.freeze_periodically())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        where = f"http://127.0.0.1:{server.port}"
        print(f"herald: node {config.node} serving {where}  (WebSocket "
              f"ws://127.0.0.1:{server.port}/ws)",
              file=sys.stderr, flush=True)
        if config.embedded:
            print(f"herald: embedded PostgreSQL in {config.data_dir / 'pg'}; "
                  f"API key in {config.data_dir / 'api_key'}", file=sys.stderr, flush=True)
        if config.dev:
            print(f"herald: dev login at {where}/login", file=sys.stderr, flush=True)
        await stop.wait()
        print("herald: shutting down", file=sys.stderr, flush=True)
        await tasks.cancel(collector)
        await server.stop()

    run_loop(run(), uvloop=config.uvloop)
    return 0


def run_loop(main: Coroutine[Any, Any, None], uvloop: bool) -> None:
    """Run ``main`` on uvloop when asked for and installed (a dependency on every platform
    but Windows), else on asyncio's own loop. Measured in bench/wakeup.py."""
    if uvloop:
        try:
            import uvloop as fast
        except ImportError:
            log.warning("HERALD_UVLOOP is on but uvloop is not installed; using asyncio")
        else:
            fast.run(main)
            return
    asyncio.run(main)


# --- migrate / token / send -------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    config = _load(args, ["database_url", "data_dir"])
    url = _database(config)
    schema.upgrade(url)
    print(f"herald: schema at revision {schema.head_revision()}", file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args, ["database_url", "secret", "data_dir"])
    try:
        print(config.tokens.mint(args.user, args.ttl or config.token_ttl))
    except ValueError as err:
        raise CliError(str(err)) from None
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from app.store import NewNotification, Store

    config = _load(args, ["database_url", "data_dir"])
    try:
        data = None if args.data is None else json.loads(args.data)
    except ValueError:
        raise CliError("--data must be a JSON object, e.g. '{\"order_id\": 1001}'") from None
    item = {"user_id": args.user, "title": args.title, "body": args.body, "data": data,
            "link": args.link, "category": args.category, "expires_at": args.expires_at,
            "group_key": args.group_key}
    try:
        (valid,) = publish.parse_publish(json.dumps(item).encode(), 1)
    except protocol.ProtocolError as err:
        raise CliError(err.message.replace("notification.", "")) from None
    url = _database(config)

    async def run() -> dict[str, Any]:
        pool, behind_pooler = await db.open_store_pool(url, "herald:send", min_size=1, max_size=1)
        try:
            (row,) = await Store(pool, behind_pooler=behind_pooler).insert(
                [NewNotification(**valid)])
        finally:
            await pool.close()
        return {"id": row.id, "seq": row.seq, "user_id": row.user_id,
                "created_at": protocol.iso(row.created_at)}

    print(json.dumps(asyncio.run(run())))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from app.retention import PruneBusy, RetentionStore, prune_pass

    config = _load(args, ["database_url", "data_dir", "retention_days"])
    days: float | None = config.retention_days or None
    if args.older_than is not None:
        try:
            days = retention_days(args.older_than)
        except ValueError:
            days = 0
        if not days:
            raise CliError(f"--older-than must be a positive number of days up to "
                           f"{MAX_RETENTION_DAYS}, e.g. 30")
    url = _database(config)

    async def run() -> tuple[int, int]:
        pool, behind_pooler = await db.open_store_pool(url, "herald:prune", min_size=1, max_size=1)
        try:
            result = await prune_pass(RetentionStore(pool, behind_pooler=behind_pooler), days,
                                      batch=config.prune_batch, pause=config.prune_pause)
        except PruneBusy as err:
            raise CliError(str(err)) from None
        finally:
            await pool.close()
        return result.old, result.expired

    old, expired = asyncio.run(run())
    if days:
        print(f"deleted {old + expired} rows ({old} created more than {days:g} days ago, "
              f"{expired} expired)")
    else:
        print(f"deleted {expired} rows ({expired} expired; none by age: no --older-than "
              "or HERALD_RETENTION_DAYS)")
    return 0


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _ranges(numbers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2,5,7-8`` (``-`` for none)."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans) or "-"


def cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from app.heartbeats import Heartbeats

    config = _load(args, ["database_url", "data_dir", "heartbeat_interval"])
    url = _database(config)

    async def run() -> str:
        pool, behind_pooler = await db.open_store_pool(url, "herald:status", min_size=1, max_size=1)
        try:
            status = await Heartbeats(pool, behind_pooler=behind_pooler).cluster_status()
        finally:
            await pool.close()
        stale = 3 * config.heartbeat_interval
        alive = [n for n in status.nodes if n.age < stale]
        lines = [f"herald status: {len(alive)} node{'s' * (len(alive) != 1)} alive, "
                 f"{sum(n.sockets for n in alive)} sockets"]
        if status.nodes:
            lines.append(f"  {'node':<20} {'sockets':>8}  {'started (UTC)':<19}  "
                         f"{'heartbeat':<12} {'relay':<7} {'state':<9} shards")
        for n in status.nodes:
            state = "gone" if n.age >= stale else "draining" if n.draining else "serving"
            lines.append(f"  {n.name[:20]:<20} {n.sockets:>8}  "
                         f"{n.started_at.strftime('%Y-%m-%d %H:%M:%S')}  "
                         f"{_ago(n.age):<12} {'leader' if n.relay_leader else '':<7} "
                         f"{state:<9} {_ranges(n.shards)}")
        lines.append(f"NOTIFY queue: {status.notify_queue_usage:.2%} used")
        lines.append("relay: " + (f"batching (lease until {status.relay_batched_until:%H:%M:%S})"
                                  if status.relay_batched_until
                                  else "writers notify directly"))
        oldest = status.oldest_undelivered
        if oldest is None:
            lines.append("oldest undelivered: none")
        else:
            age = (datetime.now(timezone.utc) - oldest["created_at"]).total_seconds()
            lines.append(f"oldest undelivered: {_ago(max(0.0, age))} "
                         f"({oldest['user_id']} #{oldest['seq']})")
        return "\n".join(lines)

    print(asyncio.run(run()))
    return 0


# --- tail -------------------------------------------------------------------------------


def _describe(frame: dict[str, Any]) -> str:
    line = f"#{frame['seq']}  {frame['created_at']}  {frame['title']}"
    if frame.get("category"):
        line += f"  [{frame['category']}]"
    if frame.get("body"):
        line += f" — {frame['body']}"
    if frame.get("data"):
        line += "  " + json.dumps(frame["data"], ensure_ascii=False)
    if frame.get("link"):
        line += f"  <{frame['link']}>"
    if frame.get("expires_at"):
        line += f"  (expires {frame['expires_at']})"
    return line


def _show(frame: dict[str, Any], as_json: bool) -> None:
    """Print one server frame the way ``herald tail`` shows it."""
    kind = frame.get("type")
    if as_json:
        print(json.dumps(frame, ensure_ascii=False), flush=True)
    elif kind == "welcome":
        print(f"herald tail: {frame['user']} on node {frame['node']} "
              f"(last seq {frame['last_seq']}, {frame['unread']} unread)",
              file=sys.stderr, flush=True)
    elif kind == "notification":
        print(_describe(frame), flush=True)
    elif kind in protocol.CHANGE_KINDS:
        what = f"all up to #{frame['seq']}" if frame.get("all") else frame["ids"]
        print(f"herald tail: {kind} {what} ({frame['unread']} unread)",
              file=sys.stderr, flush=True)
    elif kind == "preferences":
        print(f"herald tail: muted {frame['muted']} ({frame['unread']} unread)",
              file=sys.stderr, flush=True)
    elif kind == "error":
        print(f"herald tail: {frame['code']}: {frame['message']}", file=sys.stderr)


async def _tail(config: Config, args: argparse.Namespace) -> int:
    from app.client import ResumingClient

    url = args.url or f"ws://127.0.0.1:{config.port}/ws"

    def closed(code: int | None, reason: str | None) -> None:
        if code != protocol.CLOSE_UNAUTHORIZED:
            print(f"herald tail: disconnected ({code}); reconnecting", file=sys.stderr)

    client = ResumingClient(
        url, lambda: config.tokens.mint(args.user, config.token_ttl),
        on_frame=lambda frame: _show(frame, args.json), on_close=closed,
        on_connect_error=lambda err: print(f"herald tail: cannot connect to {url} ({err}); "
                                           "retrying", file=sys.stderr),
        cursor=args.last_seq, ack_delay=0.0 if args.ack else None, backoff=(0.2, 5.0),
        stop_on=frozenset({protocol.CLOSE_UNAUTHORIZED}))
    await client.run()
    raise CliError(f"{url} refused the token: {client.close_reason}")


def cmd_tail(args: argparse.Namespace) -> int:
    config = _load(args, ["database_url", "secret", "port", "data_dir"])
    return asyncio.run(_tail(config, args))


def _from_checkout(command: str, module: str, argv: Sequence[str],
                   env: dict[str, str] | None = None) -> NoReturn:
    """Hand over to the development harness (``bench/``, ``herald_dev/``): it lives in
    the source checkout next to ``app/`` and is not part of the installed package, so
    these commands exist only in a checkout's editable install."""
    checkout = Path(__file__).resolve().parent.parent
    if not (checkout / module.split(".")[0] / "__init__.py").exists():
        raise CliError(f"herald {command} is a developer command: run it from a source "
                       "checkout (git clone, then pip install -e '.[embedded,bench]')")
    path = os.pathsep.join(p for p in (str(checkout), os.environ.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv],
              {**os.environ, **(env or {}), "PYTHONPATH": path})


CLUSTER_SETTINGS = ("database_url", "secret", "api_key", "allowed_origins", "data_dir")


def cmd_cluster(args: argparse.Namespace) -> int:
    """Check the flags here (one-line errors), then run herald_dev/cluster.py with them
    as its environment."""
    if not 1 <= args.nodes <= 16:
        raise CliError("--nodes must be between 1 and 16")
    env = {SETTINGS[name].env: getattr(args, name) for name in CLUSTER_SETTINGS
           if getattr(args, name) is not None}
    if args.dev:
        env[SETTINGS["dev"].env] = "1"
    load_config(env={**os.environ, **env})
    _from_checkout("cluster", "herald_dev.cluster",
                   ["--nodes", str(args.nodes), "--port", str(args.port)], env)


def cmd_bench(args: argparse.Namespace) -> int:
    _from_checkout("bench", "bench", args.rest)


COMMANDS = {"bench": cmd_bench, "serve": cmd_serve, "migrate": cmd_migrate, "token": cmd_token,
            "send": cmd_send, "tail": cmd_tail, "cluster": cmd_cluster, "prune": cmd_prune,
            "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Every option after "bench" belongs to bench/'s own parser (see `herald bench -h`).
        args = argparse.Namespace(command="bench", rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CliError, schema.SchemaError) as err:
        print(f"herald: error: {err}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as err:
        print(f"herald: error: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
