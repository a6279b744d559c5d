"""Database plumbing: URL forms, the asyncpg pool, and the embedded PostgreSQL.

Knows nothing about notifications. ``start_embedded()`` runs PostgreSQL from the PyPI
package ``pgserver`` in ``<data_dir>/pg`` (Unix socket only, no TCP port), shared by every
``herald`` process that points at the same data directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)


def asyncpg_dsn(url: str) -> str:
    """``postgresql+asyncpg://`` / ``postgres://`` → the plain form asyncpg accepts."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    """Any PostgreSQL URL → the ``postgresql+asyncpg://`` form SQLAlchemy/alembic need."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb arrives as Python objects and leaves as JSON text; timestamps stay UTC.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def _reset(conn: asyncpg.Connection) -> None:
    """Return a connection to the pool. asyncpg's default sends ``RESET ALL; UNLISTEN *;
    pg_advisory_unlock_all(); CLOSE ALL`` on *every* release, one more round trip per
    query (13% of a node's time at 500 notifications/s). Pool connections here never
    LISTEN, lock, open cursors or change session settings (SET LOCAL only), so only an
    abandoned transaction needs undoing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, application_name: str, **kwargs: Any) -> asyncpg.Pool:
    """Open the node's query pool. Raises ``OSError``/``asyncpg`` errors if unreachable."""
    pool = await asyncpg.create_pool(
        asyncpg_dsn(dsn),
        init=_init_connection,
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
    import pgserver  # imported lazily: only the embedded mode needs it

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
