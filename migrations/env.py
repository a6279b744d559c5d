"""Alembic environment (async template): runs Herald's revisions over asyncpg.

The URL is taken from ``-x url=...``, then the config's ``sqlalchemy.url`` (set by
``herald migrate``), then ``HERALD_DATABASE_URL``. The version table is
``public.herald_alembic_version`` so Herald can share a database with a host
application that uses alembic itself.
"""

import asyncio
import os
import sys
from typing import Any

from alembic import context
from sqlalchemy import event, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import sqlalchemy_url
from app.models import VERSION_TABLE, metadata

config = context.config
target_metadata = metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    ) or os.environ.get("HERALD_DATABASE_URL")
    if not url:
        raise SystemExit(
            "herald: no database URL: set HERALD_DATABASE_URL or pass -x url=postgresql://..."
        )
    return sqlalchemy_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        # Named with its schema: revision 0009 pins search_path for its own statements.
        version_table_schema="public",
        include_schemas=True,
        include_name=lambda name, type_, parent: type_ != "schema" or name == "herald",
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


# Migrations run as an administrator, often a superuser: on its connection nothing but
# pg_catalog (and its own temporary schema) is searched, so no function or operator
# planted in a schema on its usual path (public, where anyone may create on older
# servers) is ever picked for its statements or alembic's, or bound into a function
# body (revision 0009). Every revision names its objects with their schema.
PINNED_PATH = "pg_catalog, pg_temp"


def _print_notice(connection: object, message: object) -> None:
    # What a revision says with RAISE NOTICE (roles converted, privileges removed) is
    # meant for the operator who runs it; PostgreSQL's "does not exist, skipping" is not.
    text = str(getattr(message, "message", message))
    if not text.endswith("does not exist, skipping"):
        print(f"herald migration: {text}", file=sys.stderr)


async def run_migrations_online() -> None:
    engine = create_async_engine(
        _url(), poolclass=pool.NullPool,
        connect_args={"server_settings": {"search_path": PINNED_PATH}})

    @event.listens_for(engine.sync_engine, "connect")
    def _notices(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_log_listener(_print_notice)

    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
