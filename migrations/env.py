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
# a trigger, rule, check, default or index expression on it would run as that
# administrator, and a table someone else made before the first migration would be
# adopted with whatever they attached. So before anything runs, in the migration's own
# transaction: the table is made here if missing (alembic's shape); one another role owns
# is rebuilt by a superuser (its rows kept, nothing else) or refused to anyone else; what
# is attached to it stops the migration; every right on it, table or column, but its
# owner's and the nodes' SELECT is revoked (committed with the first revision's work, so
# nobody can attach anything later); and it is locked against new triggers meanwhile.
GUARD_VERSION_TABLE = f"""
DO $$
DECLARE
    version regclass;
    rows text[];
    found text;
    item record;
    me oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
BEGIN
    version := to_regclass('public.{VERSION_TABLE}');
    IF version IS NOT NULL AND (SELECT relowner FROM pg_class WHERE oid = version) <> me THEN
        IF NOT (SELECT rolsuper FROM pg_roles WHERE oid = me) THEN
            RAISE EXCEPTION 'public.{VERSION_TABLE} belongs to %, not to %: as a superuser, '
                'ALTER TABLE public.{VERSION_TABLE} OWNER TO %, or migrate as a superuser',
                (SELECT relowner::regrole FROM pg_class WHERE oid = version), current_user,
                current_user;
        END IF;
        EXECUTE format('SELECT array_agg(version_num::text) FROM %s', version) INTO rows;
        RAISE NOTICE 'public.{VERSION_TABLE} belonged to %: rebuilt, owned by %',
            (SELECT relowner::regrole FROM pg_class WHERE oid = version), current_user;
        EXECUTE format('DROP TABLE %s', version);  -- fails if anything depends on it
        version := NULL;
    END IF;
    IF version IS NULL THEN
        CREATE TABLE public.{VERSION_TABLE} (
            version_num varchar(32) NOT NULL,
            CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num));
        version := to_regclass('public.{VERSION_TABLE}');
        INSERT INTO public.{VERSION_TABLE} SELECT unnest(coalesce(rows, '{{}}'));
    END IF;
    SELECT string_agg(what, ', ') INTO found FROM (
        SELECT 'trigger ' || tgname AS what FROM pg_trigger
        WHERE tgrelid = version AND NOT tgisinternal
        UNION ALL SELECT 'rule ' || rulename FROM pg_rewrite WHERE ev_class = version
        UNION ALL SELECT 'policy ' || polname FROM pg_policy WHERE polrelid = version
        UNION ALL SELECT 'inheritance' FROM pg_inherits
        WHERE inhrelid = version OR inhparent = version
        UNION ALL SELECT 'constraint ' || conname FROM pg_constraint
        WHERE (conrelid = version AND conname <> '{VERSION_TABLE}_pkc') OR confrelid = version
    ) AS strangers;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'public.{VERSION_TABLE}: %. Whatever is attached to it runs as '
            'the role that migrates: remove it, then migrate again', found;
    END IF;
    FOR item IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                             ELSE a.grantee::regrole::text END AS grantee
        FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = version AND a.grantee <> me
        UNION
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                             ELSE a.grantee::regrole::text END
        FROM pg_attribute t, aclexplode(t.attacl) a
        WHERE t.attrelid = version AND a.grantee <> me
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s CASCADE', version, item.grantee);
        EXECUTE format('REVOKE ALL (version_num) ON %s FROM %s CASCADE', version,
                       item.grantee);
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
