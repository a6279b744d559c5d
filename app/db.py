"""Database plumbing: URL forms, the asyncpg pool, and the embedded PostgreSQL.

Knows nothing about notifications. ``start_embedded()`` runs PostgreSQL from the PyPI
package ``pgserver`` in ``<data_dir>/pg`` (Unix socket only, no TCP port), shared by every
``herald`` process that points at the same data directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)


class _OneLineFloorWarnings(logging.Filter):
    """asyncpg logs every failed attempt to reopen its pool's floor connections with a
    full traceback (one per second or so for as long as the database is down). Keep the
    warning, as one line naming the error: the outage itself is visible in /readyz."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg.startswith("Failed to restore the pool connection floor") \
                and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = "database: cannot reopen the pool's connections (%s: %s); retrying"
            record.args = (type(error).__name__, str(error).splitlines()[0] if str(error)
                           else "")
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLineFloorWarnings())


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://`` / ``postgres://`` → the plain form asyncpg accepts."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    """Any PostgreSQL URL → the ``postgresql+asyncpg://`` form SQLAlchemy/alembic need.

    A libpq multi-host URL (``postgresql://u@db1:5432,db2:5432/herald?target_session_
    attrs=read-write``, which asyncpg reads as it is) becomes SQLAlchemy's form of it,
    one ``host=name:port`` query argument per host (a port is required there: 5432 when
    none is given); ``target_session_attrs`` and the other arguments go through to
    asyncpg unchanged."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))
    query = [f"host={quote(_with_port(host), safe=':[]')}" for host in hosts.split(",")]
    if parts.query:
        query.append(parts.query)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", netloc=userinfo + at,
                                     query="&".join(query)))


def _with_port(host: str) -> str:
    """``db1`` → ``db1:5432``; ``db1:6432`` and ``[::1]:5432`` stay as they are."""
    if host.endswith("]") or ":" not in host.rsplit("]", 1)[-1]:
        return f"{host}:5432"
    return host


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb arrives as Python objects and leaves as JSON text; timestamps stay UTC.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _reset(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool. asyncpg's default sends ``RESET ALL; UNLISTEN *;
    pg_advisory_unlock_all(); CLOSE ALL`` on *every* release, one more round trip per
    query (13% of a node's time at 500 notifications/s). Pool connections here never
    LISTEN, lock, open cursors or change session settings (SET LOCAL only, beyond the
    jit = off each gets once when it opens), so only an
    abandoned transaction needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _init_direct_connection(conn: asyncpg.Connection) -> None:
    await _init_connection(conn)
    # PostgreSQL's JIT compiles a query whose estimated cost passes jit_above_cost: a
    # fetch for 3,333 users in one query (after a bus loss a node fetches for every
    # local user at once; its estimate is far above its real cost) spent 149 of its
    # 184 ms compiling. The node's queries are short; JIT never pays for itself here.
    # A SET, not a startup setting, which PgBouncer (even in session mode) refuses
    # when it does not know it; behind a transaction pooler, where
    # a SET would land on whichever server is free, docs/operations.md says to set it on
    # the role instead.
    await conn.execute("SET jit = off")


async def _init_pooled_connection(conn: asyncpg.Connection) -> None:
    # Behind a transaction pooler, consecutive statements may reach different servers:
    # the codec's type lookups must run in one transaction (one server) too.
    async with conn.transaction():
        await _init_connection(conn)


async def backend_pid(conn: asyncpg.Connection) -> int:
    """The server process serving ``conn``'s next statement, read with the simple query
    protocol (a NOTICE carries it): no prepared statement, which a transaction pooler
    such as PgBouncer 1.18 cannot carry between servers."""
    pids: asyncio.Queue[int] = asyncio.Queue()

    def listener(_conn: Any, message: Any) -> None:
        if str(message.message).startswith("herald-pid "):
            pids.put_nowait(int(str(message.message).split()[1]))

    conn.add_log_listener(listener)
    try:
        await conn.execute(
            "DO $$ BEGIN RAISE NOTICE 'herald-pid %', pg_backend_pid(); END $$")
        return await asyncio.wait_for(pids.get(), 5)
    finally:
        conn.remove_log_listener(listener)


async def behind_transaction_pooler(dsn: str, application_name: str = "herald:probe",
                                    rounds: int = 10) -> bool:
    """Whether connections to ``dsn`` go through a pooler in transaction (or statement)
    mode, which hands a client's statements to whichever server is free: LISTEN does
    not work there, nor do prepared statements across statements.

    The probe: two clients ask, in turn, which server process runs their statement,
    ``rounds`` times each. Directly, or through a session-mode pooler, each client keeps
    one server of its own: two pids, never shared, never changing. A transaction pooler
    shows itself as soon as one client's statements move to another server, or the two
    clients' statements meet on one (PgBouncer hands out the server given back last).
    Other clients of a busy pooler can take the freed server between two statements,
    which is why one look is not enough (a node starting next to a busy one was once
    taken for a direct client, and its prepared statements failed)."""
    first = await asyncpg.connect(asyncpg_dsn(dsn), statement_cache_size=0, timeout=10,
                                  server_settings={"application_name": application_name})
    try:
        second = await asyncpg.connect(asyncpg_dsn(dsn), statement_cache_size=0, timeout=10,
                                       server_settings={"application_name": application_name})
        try:
            firsts: set[int] = set()
            seconds: set[int] = set()
            for _ in range(rounds):
                firsts.add(await backend_pid(first))
                seconds.add(await backend_pid(second))
                if len(firsts) > 1 or len(seconds) > 1 or firsts & seconds:
                    return True
            return False
        finally:
            await second.close()
    finally:
        await first.close()


async def create_pool(dsn: str, application_name: str, behind_pooler: bool = False,
                      **kwargs: Any) -> asyncpg.Pool:
    """Open the node's query pool. Raises ``OSError``/``asyncpg`` errors if unreachable.

    ``behind_pooler``: the URL goes through a transaction pooler (``behind_transaction_pooler``):
    no prepared statement cache, and the callers (``app.store``) run every statement
    inside a transaction so that all of its protocol messages reach one server."""
    if behind_pooler:
        kwargs.setdefault("statement_cache_size", 0)
    pool = await asyncpg.create_pool(
        asyncpg_dsn(dsn),
        init=_init_pooled_connection if behind_pooler else _init_direct_connection,
        min_size=kwargs.pop("min_size", 1),
        max_size=kwargs.pop("max_size", 10),
        server_settings={"application_name": application_name, "timezone": "UTC"},
        timeout=kwargs.pop("timeout", 10),
        # A silently dead connection would otherwise hang a query forever.
        command_timeout=kwargs.pop("command_timeout", 15),
        reset=kwargs.pop("reset", _reset),
        **kwargs,
    )
    assert pool is not None
    return pool


async def open_store_pool(dsn: str, application_name: str, **kwargs: Any
                          ) -> tuple[asyncpg.Pool, bool]:
    """A pool for ``app.store``, and whether it goes through a transaction pooler (then
    the store must run each operation in a transaction: ``Store(behind_pooler=...)``)."""
    behind_pooler = await behind_transaction_pooler(dsn, application_name)
    return await create_pool(dsn, application_name, behind_pooler=behind_pooler,
                             **kwargs), behind_pooler


async def connect(dsn: str, application_name: str, timeout: float = 10) -> asyncpg.Connection:
    """Open one dedicated connection (the bus's LISTEN connection, CLI tools)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        asyncpg_dsn(dsn),
        server_settings={"application_name": application_name, "timezone": "UTC"},
        timeout=timeout,
    )
    await _init_connection(conn)
    return conn


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in ``data_dir/pg`` and return its URL.

    The server keeps running while any herald process that joined it is alive, and is
    stopped when the last one exits. Raises ``RuntimeError`` with the server log's tail
    when it cannot start.
    """
    try:
        import pgserver  # imported lazily: only the embedded mode needs it
    except ImportError:
        raise RuntimeError(
            "no database URL, and the embedded PostgreSQL is not installed: set "
            "HERALD_DATABASE_URL, or pip install 'herald[embedded]'") from None

    pgdata = Path(data_dir).expanduser().resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as err:  # pgserver raises bare subprocess/assert errors
        tail = ""
        logfile = pgdata / "log"
        if logfile.exists():
            tail = " | ".join(logfile.read_text(errors="replace").splitlines()[-3:])
        raise RuntimeError(
            f"embedded PostgreSQL in {pgdata} failed to start: {err} {tail}"
        ) from None
    return str(server.get_uri())
