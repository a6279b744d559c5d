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


# The version table is written by every migration, as the administrator that runs it:
# a trigger (or rule, policy, foreign key...) on it would run as that administrator, and
# a table someone else created before the first migration would be adopted as it is.
# So before anything runs: it must be an ordinary table owned by this role (or a
# superuser) with nothing attached; every right on it but its owner's and the nodes'
# SELECT is revoked; and it stays locked against new triggers while the revisions run.
GUARD_VERSION_TABLE = f"""
DO $$
DECLARE
    version regclass := to_regclass('public.{VERSION_TABLE}');
    found text;
    item record;
BEGIN
    IF version IS NULL THEN
        RETURN;  -- alembic creates it, owned by this role
    END IF;
    -- A superuser takes over a table another role owns (the role that migrated before,
    -- say): its owner could attach code to it at will. Anyone else may not run on it.
    IF (SELECT relowner FROM pg_class WHERE oid = version) <> (SELECT oid FROM pg_roles
                                                               WHERE rolname = current_user)
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE NOTICE '% now belongs to %', version, current_user;
        EXECUTE format('ALTER TABLE %s OWNER TO %I', version, current_user);
    END IF;
    SELECT string_agg(what, ', ') INTO found FROM (
        SELECT 'owned by ' || c.relowner::regrole AS what FROM pg_class c
        WHERE c.oid = version AND c.relowner <> (SELECT oid FROM pg_roles
                                                 WHERE rolname = current_user)
        UNION ALL SELECT 'not an ordinary table' FROM pg_class c
        WHERE c.oid = version AND c.relkind <> 'r'
        UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger
        WHERE tgrelid = version AND NOT tgisinternal
        UNION ALL SELECT 'rule ' || rulename FROM pg_rewrite WHERE ev_class = version
        UNION ALL SELECT 'policy ' || polname FROM pg_policy WHERE polrelid = version
        UNION ALL SELECT 'inheritance' FROM pg_inherits
        WHERE inhrelid = version OR inhparent = version
        UNION ALL SELECT 'foreign key ' || conname FROM pg_constraint
        WHERE contype = 'f' AND (confrelid = version OR conrelid = version)
    ) AS strangers;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'public.{VERSION_TABLE}: %. Whatever is attached to it runs as '
            'the role that migrates: remove it (or, if another role made the table, drop '
            'it on a database Herald never migrated), then migrate again', found;
    END IF;
    FOR item IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                             ELSE a.grantee::regrole::text END AS grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = version AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s CASCADE', version, item.grantee);
    END LOOP;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_node') THEN
        EXECUTE format('GRANT SELECT ON %s TO herald_node', version);
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', version);
END
$$
"""


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        # Refuse an unpinned session (PgBouncer in transaction mode loses a SET between
        # transactions): migrate directly, or through PgBouncer in session mode.
        path = connection.exec_driver_sql("SHOW search_path").scalar()
        if path != PINNED_PATH:
            raise SystemExit(f"herald: migrations need a session whose search_path stays "
                             f"{PINNED_PATH!r} (got {path!r}): connect to PostgreSQL "
                             "directly, or through PgBouncer in session mode")
        connection.exec_driver_sql(GUARD_VERSION_TABLE)
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
    if not text.endswith(("does not exist, skipping", "already exists, skipping")):
        print(f"herald migration: {text}", file=sys.stderr)


async def run_migrations_online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)

    @event.listens_for(engine.sync_engine, "connect")
    def _pin(dbapi_connection: Any, _record: Any) -> None:
        # A SET, not a startup parameter: PgBouncer refuses unknown startup parameters.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET search_path = {PINNED_PATH}")
        cursor.close()
        dbapi_connection.driver_connection.add_log_listener(_print_notice)

    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
