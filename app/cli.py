"""The ``herald`` command: serve, migrate, token, send, tail.

Each command is thin: it builds a ``Config`` (environment, overridden by flags), resolves
the database (external URL, or the embedded one in ``HERALD_DATA_DIR``) and calls into
the package. Any expected failure ends with one ``herald: error: ...`` line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Coroutine, NoReturn, Sequence

import asyncpg

from app import __version__, db, gcpolicy, protocol, schema, tasks
from app.config import MAX_RETENTION_DAYS, Config, ConfigError, load_config, retention_days
from app.logs import setup_logging

log = logging.getLogger("herald")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    helps = {
        "database_url": "PostgreSQL URL, libpq style; several hosts find the primary, e.g. "
        "postgresql://u@db1,db2/herald?target_session_attrs=read-write (env "
        "HERALD_DATABASE_URL; none = embedded PostgreSQL)",
        "bus_database_url": "a direct PostgreSQL URL for LISTEN and the relay, when "
        "HERALD_DATABASE_URL goes through PgBouncer in transaction mode (env "
        "HERALD_BUS_DATABASE_URL)",
        "secret": "JWT signing secret (env HERALD_SECRET)",
        "api_key": "API key for POST /api/notifications (env HERALD_API_KEY)",
        "port": "HTTP port (env HERALD_PORT, default 8888; 0 = any free port)",
        "host": "bind address (env HERALD_HOST, default all interfaces)",
        "node": "node name (env HERALD_NODE, default host:port)",
        "allowed_origins": "comma-separated browser origins (env HERALD_ALLOWED_ORIGINS)",
        "data_dir": "embedded database and generated secrets (env HERALD_DATA_DIR, "
        "default ~/.herald)",
    }
    for name in names:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                            help=helps[name])


def _add_cluster(sub: "argparse._SubParsersAction[_Parser]") -> None:
    cluster = sub.add_parser(
        "cluster", help="run N nodes behind nginx locally (development)",
        description="Start N `herald serve` nodes behind nginx (docker/nginx.conf) on one "
        "port, on HERALD_DATABASE_URL or the embedded PostgreSQL. Ctrl-C stops all of it.")
    cluster.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    cluster.add_argument("--port", type=int, default=8080, help="nginx port (default 8080)")
    cluster.add_argument("--dev", action="store_true", default=None,
                         help="nodes with the /login page and the send form (as serve --dev)")
    _config_flags(cluster, "database_url", "secret", "api_key", "allowed_origins", "data_dir")


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
                  "host", "node", "allowed_origins", "data_dir")
    serve.add_argument("--dev", action="store_true", default=None,
                       help="enable the /login page (pick any user; never in production)")
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument("--log-format", default=None, choices=["json", "text"],
                       help="json: one object per line (env HERALD_LOG_FORMAT, default json)")

    migrate = sub.add_parser("migrate", help="upgrade the database schema to head",
                             description="Same as `alembic upgrade head`.")
    _config_flags(migrate, "database_url", "data_dir")

    token = sub.add_parser("token", help="print a user JWT signed with HERALD_SECRET",
                           description="Print a JWT (HS256) whose sub is USER.")
    token.add_argument("user", metavar="USER")
    token.add_argument("--ttl", type=int, default=None,
                       help="lifetime in seconds (env HERALD_TOKEN_TTL, default 3600)")
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
                          "host", "node", "allowed_origins", "data_dir", "dev"])
    setup_logging(args.log_level, args.log_format or config.log_format, config.node)
    url = _database(config)
    if config.embedded:
        schema.upgrade(url)

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
    """Run ``main`` on uvloop when asked for and installed (the ``fast`` extra), else on
    asyncio's own loop. Measured in bench/: see docs/benchmarks.md."""
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
            "link": args.link, "category": args.category, "expires_at": args.expires_at}
    try:
        (valid,) = protocol.parse_publish(json.dumps(item).encode(), 1)
    except protocol.ProtocolError as err:
        raise CliError(err.message.replace("notification.", "")) from None
    url = _database(config)

    async def run() -> dict[str, Any]:
        pool, pooled = await db.open_store_pool(url, "herald:send", min_size=1, max_size=1)
        try:
            (row,) = await Store(pool, in_transactions=pooled).insert(
                [NewNotification(**valid)])
        finally:
            await pool.close()
        return {"id": row.id, "seq": row.seq, "user_id": row.user_id,
                "created_at": protocol.iso(row.created_at)}

    print(json.dumps(asyncio.run(run())))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from app.retention import PruneBusy, prune_pass
    from app.store import Store

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
        pool, pooled = await db.open_store_pool(url, "herald:prune", min_size=1, max_size=1)
        try:
            result = await prune_pass(Store(pool, in_transactions=pooled), days,
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


def cmd_status(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from app.store import Store

    config = _load(args, ["database_url", "data_dir", "heartbeat_interval"])
    url = _database(config)

    async def run() -> str:
        pool, pooled = await db.open_store_pool(url, "herald:status", min_size=1, max_size=1)
        try:
            status = await Store(pool, in_transactions=pooled).cluster_status()
        finally:
            await pool.close()
        stale = 3 * config.heartbeat_interval
        alive = [n for n in status.nodes if n.age < stale]
        lines = [f"herald status: {len(alive)} node{'s' * (len(alive) != 1)} alive, "
                 f"{sum(n.sockets for n in alive)} sockets"]
        if status.nodes:
            lines.append(f"  {'node':<20} {'sockets':>8}  {'started (UTC)':<19}  "
                         f"{'heartbeat':<12} {'relay':<7} state")
        for n in status.nodes:
            state = "gone" if n.age >= stale else "draining" if n.draining else "serving"
            lines.append(f"  {n.name[:20]:<20} {n.sockets:>8}  "
                         f"{n.started_at.strftime('%Y-%m-%d %H:%M:%S')}  "
                         f"{_ago(n.age):<12} {'leader' if n.relay_leader else '':<7} {state}")
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


def _show(frame: dict[str, Any], raw: str, as_json: bool) -> None:
    """Print one server frame the way ``herald tail`` shows it."""
    kind = frame.get("type")
    if as_json:
        print(raw, flush=True)
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
    elif kind == "error":
        print(f"herald tail: {frame['code']}: {frame['message']}", file=sys.stderr)


async def _tail(config: Config, args: argparse.Namespace) -> int:
    from tornado.websocket import WebSocketClosedError, websocket_connect

    url = args.url or f"ws://127.0.0.1:{config.port}/ws"
    cursor: int | None = args.last_seq
    backoff = 0.2
    while True:
        try:
            conn = await websocket_connect(url, connect_timeout=5)
        except (OSError, asyncio.TimeoutError, WebSocketClosedError) as err:
            print(f"herald tail: cannot connect to {url} ({err}); retrying", file=sys.stderr)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        token = config.tokens.mint(args.user, config.token_ttl)
        await conn.write_message(json.dumps({"type": "hello", "token": token,
                                             "last_seq": cursor, "batch": True}))
        while True:
            message = await conn.read_message()
            if message is None:
                break
            assert isinstance(message, str)
            acked = cursor
            for line in message.split("\n"):  # "batch": one message per line
                frame = json.loads(line)
                _show(frame, line, args.json)
                if frame.get("type") == "welcome":
                    backoff = 0.2
                elif frame.get("type") == "notification":
                    cursor = frame["seq"]
            if args.ack and cursor is not None and cursor != acked:
                # Cumulative: one ack for everything this message brought.
                await conn.write_message(json.dumps({"type": "ack", "seq": cursor}))
        if conn.close_code == protocol.CLOSE_UNAUTHORIZED:
            raise CliError(f"{url} refused the token: {conn.close_reason}")
        print(f"herald tail: disconnected ({conn.close_code}); reconnecting", file=sys.stderr)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


def cmd_tail(args: argparse.Namespace) -> int:
    config = _load(args, ["database_url", "secret", "port", "data_dir"])
    return asyncio.run(_tail(config, args))


def cmd_cluster(args: argparse.Namespace) -> int:
    from app.cluster import ClusterError, LocalCluster

    if not 1 <= args.nodes <= 16:
        raise CliError("--nodes must be between 1 and 16")
    config = _load(args, ["database_url", "secret", "api_key", "allowed_origins", "data_dir",
                          "dev"])
    url = _database(config)
    node_env = {"HERALD_DEV": "1" if config.dev else "0"}
    if config.allowed_origins:
        node_env["HERALD_ALLOWED_ORIGINS"] = ",".join(config.allowed_origins)

    async def run() -> None:
        cluster = LocalCluster(config.data_dir / "cluster", nodes=args.nodes, port=args.port,
                               database_url=url, secret=config.secret,
                               api_key=config.api_key or "", node_env=node_env)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start()
            print(f"herald: {args.nodes} nodes behind nginx at {cluster.url} "
                  f"(WebSocket {cluster.ws_url}); logs in {cluster.workdir}",
                  file=sys.stderr, flush=True)
            if config.dev:
                print(f"herald: dev login at {cluster.url}/login", file=sys.stderr, flush=True)
            await stop.wait()
        except ClusterError as err:
            raise CliError(str(err)) from None
        finally:
            await cluster.stop()

    asyncio.run(run())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    checkout = Path(__file__).resolve().parent.parent  # bench/ sits beside app/, unpackaged
    if (checkout / "bench" / "__main__.py").exists() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from bench.__main__ import main as bench_main
    except ImportError as err:
        raise CliError(f"herald bench needs a source checkout with the bench extra "
                       f"(pip install -e '.[bench]'): {err}") from None
    bench_main(args.rest)
    return 0


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
