"""Schema management through alembic: upgrade to head, and "is this database at head?".

The migrations live in the top-level ``migrations/`` folder next to ``alembic.ini`` (and
inside the package once installed, see ``app.resources``); ``herald migrate`` and
``alembic upgrade head`` run the very same revisions.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from app import db, resources
from app.models import VERSION_TABLE


class SchemaError(Exception):
    """The database schema is missing or not at the code's head revision."""


def alembic_config(url: str | None = None) -> AlembicConfig:
    """An alembic config for Herald's migrations, optionally bound to ``url``."""
    ini = resources.alembic_ini()
    cfg = AlembicConfig(str(ini)) if ini is not None else AlembicConfig()
    cfg.set_main_option("script_location", str(resources.folder("migrations")))
    if url:
        # alembic's config is ConfigParser-based: a literal % must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` against ``url`` (blocking; call outside a loop)."""
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def check_at_head(conn: asyncpg.Connection) -> None:
    """Raise ``SchemaError`` unless the database's recorded revision is the code's head."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"public.{VERSION_TABLE}")
    head = head_revision()
    if not exists:
        raise SchemaError(
            "database has no Herald schema: run `herald migrate` (or `alembic upgrade head`)"
        )
    current = await conn.fetchval(f"SELECT version_num FROM public.{VERSION_TABLE}")
    if current != head:
        raise SchemaError(
            f"database schema is at revision {current or 'none'}, this Herald needs {head}: "
            "run `herald migrate` (or `alembic upgrade head`)"
        )



# The login role a node of the embedded database runs as: a member of herald_node
# (revision 0009), never the superuser that migrated (docs/operations.md, "Roles").
EMBEDDED_NODE_ROLE = "herald_app"


async def _ensure_node_login(conn: asyncpg.Connection) -> None:
    await conn.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{EMBEDDED_NODE_ROLE}') THEN
                CREATE ROLE {EMBEDDED_NODE_ROLE} LOGIN;
            END IF;
        END $$""")
    await conn.execute(f"GRANT herald_node TO {EMBEDDED_NODE_ROLE}")


def embedded_node_url(admin_url: str) -> str:
    """The URL a node of the embedded database uses: ``admin_url`` (the superuser's, on
    a local socket with trust authentication) as ``EMBEDDED_NODE_ROLE``, created and
    made a member of ``herald_node`` when needed. Call after ``upgrade``."""
    async def run() -> None:
        conn = await asyncpg.connect(db.asyncpg_dsn(admin_url))
        try:
            await _ensure_node_login(conn)
        finally:
            await conn.close()

    asyncio.run(run())
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{EMBEDDED_NODE_ROLE}@{host}"))
