"""Schema management through alembic: upgrade to head, and "is this database at head?".

The migrations live in the top-level ``migrations/`` folder next to ``alembic.ini`` (and
inside the package once installed, see ``app.resources``); ``herald migrate`` and
``alembic upgrade head`` run the very same revisions.
"""

from __future__ import annotations

import asyncpg
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory

from app import resources
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

