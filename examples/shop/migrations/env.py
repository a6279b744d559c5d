"""The shop's alembic environment: schema ``shop`` only, version table
``shop.shop_alembic_version`` (Herald keeps ``public.herald_alembic_version``).

The URL comes from ``-x url=...`` or ``SHOP_DATABASE_URL``."""

import asyncio
import os

from alembic import context
from shop.tables import shop
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "SHOP_DATABASE_URL")
    if not url:
        raise SystemExit("shop: set SHOP_DATABASE_URL (or -x url=postgresql://...)")
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=shop, version_table="shop_alembic_version",
        version_table_schema="shop", include_schemas=True,
        include_name=lambda name, type_, parent: type_ != "schema" or name == "shop")
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        # The version table lives in the schema, so the schema must exist first.
        await connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS shop")
        await connection.commit()
        await connection.run_sync(_run)
    await engine.dispose()


asyncio.run(main())
