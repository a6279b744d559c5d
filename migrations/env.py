"""Alembic environment (async template): runs Herald's revisions over asyncpg.

The URL is taken from ``-x url=...``, then the config's ``sqlalchemy.url`` (set by
``herald migrate``), then ``HERALD_DATABASE_URL``. The version table is
``public.herald_alembic_version`` so Herald can share a database with a host
application that uses alembic itself.
"""

import asyncio
import os

from alembic import context
from sqlalchemy import pool
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


async def run_migrations_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
