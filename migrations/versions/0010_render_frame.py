"""one rendering of the notification frame: herald.render_frame(n)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

Why: the frame was written out three times (the nodes' fetch in app/store.py, the
inline frame of revision 0008's trigger, and a Python copy for the history API), held
equal by a test. Now one SQL function renders it, and both the fetch and
``notify_frame()`` call it; the current definition of every function and trigger is in
``sql/`` (tests/test_sql_files.py holds it equal to the head schema).

``render_frame`` has a SQL-standard body (``BEGIN ATOMIC``): it is parsed once, here,
with every name resolved then (no search_path applies when it runs), and the planner
inlines it into the queries that call it, so the fetch costs what it did. It runs as
its caller: the nodes (``herald_node``) and the owner's trigger may execute it.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0010"
down_revision: Union[str, None] = "0009"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
# As revision 0009 (and migrations/env.py for the whole connection): the function body
# below is bound once, here, so only pg_catalog's operators and functions may be found.
PIN = "SET LOCAL search_path = pg_catalog, pg_temp"


def _iso(column: str) -> str:
    # As app/store.py's _iso did (copied, not imported: a revision must not change later).
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 = 0 "
            f"THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            f"ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END")


RENDER_FRAME = f"""
CREATE FUNCTION herald.render_frame(n herald.notifications) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT json_build_object(
        'type', 'notification', 'id', n.id, 'seq', n.seq, 'title', n.title,
        'body', n.body, 'data', n.data, 'link', n.link, 'category', n.category,
        'created_at', {_iso("n.created_at")}, 'expires_at', {_iso("n.expires_at")},
        'read', n.read_at IS NOT NULL, 'archived', n.archived_at IS NOT NULL)::text;
END
"""

QUIET = ("SET search_path = pg_catalog, pg_temp SET debug_print_plan = off "
         "SET debug_print_parse = off SET debug_print_rewritten = off SET trace_notify = off "
         "SET client_min_messages = warning")


def _notify_frame(frame: str) -> str:
    return rf"""
CREATE OR REPLACE FUNCTION herald.notify_frame() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {QUIET} AS $$
DECLARE
    key record;
    payload text;
    mac text;
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'herald.notify_frame() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        RETURN NULL;  -- the relay's batches keep NOTIFY out of the writers' commits
    END IF;
    SELECT json_build_object('k', 'frame', 'u', n.user_id, 's', n.seq,
                             't', extract(epoch FROM n.created_at), 'f', {frame})::text
    INTO payload FROM herald.notifications AS n WHERE n.id = NEW.id AND n.expires_at IS NULL;
    SELECT channel, mac_inner, mac_outer INTO key FROM herald_private.bus_key WHERE id = 1;
    -- 8000 bytes is NOTIFY's cap, 64 of them the MAC; a larger frame is fetched.
    IF payload IS NOT NULL AND key.channel IS NOT NULL AND octet_length(payload) < 7800 THEN
        mac := encode(sha256(key.mac_outer || sha256(key.mac_inner
                                                     || convert_to(payload, 'UTF8'))), 'hex');
        PERFORM pg_notify(key.channel, mac || payload);
    END IF;
    RETURN NULL;
END
$$
"""


NOTIFY_FRAME = _notify_frame("herald.render_frame(n)")
# Revision 0009's, restored by downgrade() (its frame written out, as 0009 has it).
NOTIFY_FRAME_V9 = _notify_frame(f"""json_build_object(
    'type', 'notification', 'id', n.id, 'seq', n.seq, 'title', n.title, 'body', n.body,
    'data', n.data, 'link', n.link, 'category', n.category,
    'created_at', {_iso("n.created_at")}, 'expires_at', {_iso("n.expires_at")},
    'read', n.read_at IS NOT NULL, 'archived', n.archived_at IS NOT NULL)::text""")


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    _run(LOCK_TIMEOUT, PIN, RENDER_FRAME,
         "ALTER FUNCTION herald.render_frame(herald.notifications) OWNER TO herald_owner",
         "REVOKE ALL ON FUNCTION herald.render_frame(herald.notifications) FROM PUBLIC",
         "GRANT EXECUTE ON FUNCTION herald.render_frame(herald.notifications) TO herald_node",
         NOTIFY_FRAME)


def downgrade() -> None:
    _run(LOCK_TIMEOUT, PIN, NOTIFY_FRAME_V9,
         "DROP FUNCTION herald.render_frame(herald.notifications)")
