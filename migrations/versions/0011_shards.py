"""a targeted bus: announcements go on one of 64 user shards' channels

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

Why: every commit's NOTIFY went on one channel that every node listens to, so every
node woke for every notification of the cluster to learn that the user was not its own
(cluster CPU per notification grew 3.2x from one node to six). Now each user belongs to
one of ``SHARDS`` shards, ``herald.shard_of(user_id)``: the first four bytes of the MD5
of the id's UTF-8 bytes, big-endian, modulo 64 (app/shards.py and static/herald.js
compute the same). Pointers and read-state changes go on channel ``herald_<shard>``,
inline frames on ``<private channel>_<shard>``; a node listens to the shards of its
local users only. Channel ``herald`` keeps the cluster-wide ``sync``.

``herald.nodes.shards`` lists the shards a node listens to (``herald status``).

Deploying: nodes of the previous code listen on ``herald`` alone and would hear nothing
but the upgrade's closing ``sync``: restart every node after the upgrade (new nodes also
listen on ``herald``, so they can be started before it).
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0011"
down_revision: Union[str, None] = "0010"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
PIN = "SET LOCAL search_path = pg_catalog, pg_temp"
QUIET = ("SET search_path = pg_catalog, pg_temp SET debug_print_plan = off "
         "SET debug_print_parse = off SET debug_print_rewritten = off SET trace_notify = off "
         "SET client_min_messages = warning")
SYNC = """SELECT pg_notify('herald', '{"k":"sync"}')"""

SHARD_OF = """
CREATE FUNCTION herald.shard_of(user_id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
BEGIN ATOMIC
    SELECT ((('x' || substr(md5(convert_to(user_id, 'UTF8')), 1, 8))::bit(32)::bigint
             % 64))::integer;
END
"""


def _announce(channel: str) -> str:
    return rf"""
CREATE OR REPLACE FUNCTION herald.announce(users text[], seqs bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item text;
    chunk text := '';
    channel text := '';
    next_channel text;
BEGIN
    FOR i IN 1 .. coalesce(cardinality(users), 0) LOOP
        item := to_json(users[i])::text || ':' || seqs[i];
        next_channel := {channel};
        IF chunk <> '' AND (next_channel <> channel
                            OR octet_length(chunk) + octet_length(item) > 7000) THEN
            PERFORM pg_notify(channel, '{{"k":"new","u":{{' || chunk || '}}}}');
            chunk := '';
        END IF;
        channel := next_channel;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify(channel, '{{"k":"new","u":{{' || chunk || '}}}}');
    END IF;
END
$$
"""


def _notify_inserted(order: str) -> str:
    return rf"""
CREATE OR REPLACE FUNCTION herald.notify_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {QUIET} AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'herald.notify_inserted() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        -- Visible to the relay when this transaction commits, gone if it rolls back.
        INSERT INTO herald.relay_pending (user_id, seq)
        SELECT user_id, max(seq) FROM inserted GROUP BY user_id;
        RETURN NULL;
    END IF;
    SELECT array_agg(user_id{order}), array_agg(seq{order}) INTO users, seqs
    FROM (SELECT user_id, max(seq) AS seq FROM inserted GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    RETURN NULL;
END
$$
"""


def _relay_poll(order: str) -> str:
    return rf"""
CREATE OR REPLACE FUNCTION herald.relay_poll(OUT announced integer, OUT last_id bigint)
RETURNS record LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    -- Pointers of transactions still running are invisible here and stay for a later
    -- poll; the DELETE and the NOTIFYs commit together, so each is announced once.
    WITH taken AS (DELETE FROM herald.relay_pending RETURNING user_id, seq)
    SELECT array_agg(user_id{order}), array_agg(seq{order}), count(*)
    INTO users, seqs, announced
    FROM (SELECT user_id, max(seq) AS seq FROM taken GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    -- The id sequence's position: the relay's measure of the insert rate.
    SELECT s.last_value INTO last_id FROM herald.notifications_id_seq AS s;
END
$$
"""


# Users in shard order, so announce() sends one NOTIFY per shard (and per 7000 bytes).
BY_SHARD = " ORDER BY herald.shard_of(user_id), user_id"


def _notify_frame(channel: str) -> str:
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
                             't', extract(epoch FROM n.created_at),
                             'f', herald.render_frame(n))::text
    INTO payload FROM herald.notifications AS n WHERE n.id = NEW.id AND n.expires_at IS NULL;
    SELECT channel, mac_inner, mac_outer INTO key FROM herald_private.bus_key WHERE id = 1;
    -- 8000 bytes is NOTIFY's cap, 64 of them the MAC; a larger frame is fetched.
    IF payload IS NOT NULL AND key.channel IS NOT NULL AND octet_length(payload) < 7800 THEN
        mac := encode(sha256(key.mac_outer || sha256(key.mac_inner
                                                     || convert_to(payload, 'UTF8'))), 'hex');
        PERFORM pg_notify({channel}, mac || payload);
    END IF;
    RETURN NULL;
END
$$
"""


def _notify_changed(channel: str) -> str:
    return rf"""
CREATE OR REPLACE FUNCTION herald.notify_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rec record;
    i integer;
    xid bigint;
BEGIN
    FOR rec IN
        SELECT a.user_id, c.kind, array_agg(a.id ORDER BY a.id) AS ids, max(a.seq) AS seq
        FROM after_rows a
        JOIN before_rows b ON a.id = b.id
        CROSS JOIN LATERAL (VALUES
            ('read', b.read_at IS NULL AND a.read_at IS NOT NULL),
            ('unread', b.read_at IS NOT NULL AND a.read_at IS NULL),
            ('archive', b.archived_at IS NULL AND a.archived_at IS NOT NULL),
            ('unarchive', b.archived_at IS NOT NULL AND a.archived_at IS NULL)
        ) AS c(kind, changed)
        WHERE c.changed
        GROUP BY a.user_id, c.kind
    LOOP
        -- The rows' read_xid or archive_xid, as stamp_change() set it.
        xid := pg_current_xact_id()::text::bigint;
        IF rec.kind = 'read' AND current_setting('herald.read_all', true) = rec.user_id THEN
            PERFORM pg_notify({channel}, json_build_object(
                'k', 'read', 'u', rec.user_id, 'all', true, 'seq', rec.seq, 'x', xid)::text);
        ELSE
            -- 300 ids of up to 19 digits stay far below the 8000-byte payload cap.
            FOR i IN 1 .. cardinality(rec.ids) BY 300 LOOP
                PERFORM pg_notify({channel}, json_build_object(
                    'k', rec.kind, 'u', rec.user_id, 'ids', rec.ids[i : i + 299],
                    'x', xid)::text);
            END LOOP;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$
"""


SHARDED = [
    _announce("'herald_' || herald.shard_of(users[i])"),
    _notify_inserted(BY_SHARD),
    _relay_poll(BY_SHARD),
    _notify_frame("key.channel || '_' || herald.shard_of(NEW.user_id)"),
    # herald.shard_of()'s expression, written out: this trigger runs as whoever updates
    # the read state, who need not be allowed to execute Herald's functions.
    _notify_changed("'herald_' || ((('x' || substr(md5(convert_to(rec.user_id, 'UTF8')), "
                    "1, 8))::bit(32)::bigint % 64))"),
]
# Revision 0010's, restored by downgrade(): one channel for everyone (as pg_get_functiondef
# printed them at 0010).
UNSHARDED = [
    r'''CREATE OR REPLACE FUNCTION herald.announce(users text[], seqs bigint[])
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    item text;
    chunk text := '';
BEGIN
    FOR i IN 1 .. coalesce(cardinality(users), 0) LOOP
        item := to_json(users[i])::text || ':' || seqs[i];
        IF chunk <> '' AND octet_length(chunk) + octet_length(item) > 7000 THEN
            PERFORM pg_notify('herald', '{"k":"new","u":{' || chunk || '}}');
            chunk := '';
        END IF;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify('herald', '{"k":"new","u":{' || chunk || '}}');
    END IF;
END
$function$
''',
    r'''CREATE OR REPLACE FUNCTION herald.notify_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET debug_print_plan TO 'off'
 SET debug_print_parse TO 'off'
 SET debug_print_rewritten TO 'off'
 SET trace_notify TO 'off'
 SET client_min_messages TO 'warning'
AS $function$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'STATEMENT' THEN
        RAISE EXCEPTION 'herald.notify_inserted() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        -- Visible to the relay when this transaction commits, gone if it rolls back.
        INSERT INTO herald.relay_pending (user_id, seq)
        SELECT user_id, max(seq) FROM inserted GROUP BY user_id;
        RETURN NULL;
    END IF;
    SELECT array_agg(user_id), array_agg(seq) INTO users, seqs
    FROM (SELECT user_id, max(seq) AS seq FROM inserted GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    RETURN NULL;
END
$function$
''',
    r'''CREATE OR REPLACE FUNCTION herald.relay_poll(OUT announced integer, OUT last_id bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    -- Pointers of transactions still running are invisible here and stay for a later
    -- poll; the DELETE and the NOTIFYs commit together, so each is announced once.
    WITH taken AS (DELETE FROM herald.relay_pending RETURNING user_id, seq)
    SELECT array_agg(user_id), array_agg(seq), count(*) INTO users, seqs, announced
    FROM (SELECT user_id, max(seq) AS seq FROM taken GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    -- The id sequence's position: the relay's measure of the insert rate.
    SELECT s.last_value INTO last_id FROM herald.notifications_id_seq AS s;
END
$function$
''',
    r'''CREATE OR REPLACE FUNCTION herald.notify_frame()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET debug_print_plan TO 'off'
 SET debug_print_parse TO 'off'
 SET debug_print_rewritten TO 'off'
 SET trace_notify TO 'off'
 SET client_min_messages TO 'warning'
AS $function$
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
                             't', extract(epoch FROM n.created_at), 'f', herald.render_frame(n))::text
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
$function$
''',  # noqa: E501 (as pg_get_functiondef printed it)
    r'''CREATE OR REPLACE FUNCTION herald.notify_changed()
 RETURNS trigger
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    rec record;
    i integer;
    xid bigint;
BEGIN
    FOR rec IN
        SELECT a.user_id, c.kind, array_agg(a.id ORDER BY a.id) AS ids, max(a.seq) AS seq
        FROM after_rows a
        JOIN before_rows b ON a.id = b.id
        CROSS JOIN LATERAL (VALUES
            ('read', b.read_at IS NULL AND a.read_at IS NOT NULL),
            ('unread', b.read_at IS NOT NULL AND a.read_at IS NULL),
            ('archive', b.archived_at IS NULL AND a.archived_at IS NOT NULL),
            ('unarchive', b.archived_at IS NOT NULL AND a.archived_at IS NULL)
        ) AS c(kind, changed)
        WHERE c.changed
        GROUP BY a.user_id, c.kind
    LOOP
        -- The rows' read_xid or archive_xid, as stamp_change() set it.
        xid := pg_current_xact_id()::text::bigint;
        IF rec.kind = 'read' AND current_setting('herald.read_all', true) = rec.user_id THEN
            PERFORM pg_notify('herald', json_build_object(
                'k', 'read', 'u', rec.user_id, 'all', true, 'seq', rec.seq, 'x', xid)::text);
        ELSE
            -- 300 ids of up to 19 digits stay far below the 8000-byte payload cap.
            FOR i IN 1 .. cardinality(rec.ids) BY 300 LOOP
                PERFORM pg_notify('herald', json_build_object(
                    'k', rec.kind, 'u', rec.user_id, 'ids', rec.ids[i : i + 299],
                    'x', xid)::text);
            END LOOP;
        END IF;
    END LOOP;
    RETURN NULL;
END
$function$
''',
]


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    _run(LOCK_TIMEOUT, PIN, SHARD_OF,
         "ALTER FUNCTION herald.shard_of(text) OWNER TO herald_owner",
         "REVOKE ALL ON FUNCTION herald.shard_of(text) FROM PUBLIC",
         "GRANT EXECUTE ON FUNCTION herald.shard_of(text) TO herald_node",
         *SHARDED,
         "ALTER TABLE herald.nodes ADD COLUMN shards integer[] NOT NULL DEFAULT '{}'",
         SYNC)


def downgrade() -> None:
    _run(LOCK_TIMEOUT, PIN, *UNSHARDED,
         "ALTER TABLE herald.nodes DROP COLUMN shards",
         "DROP FUNCTION herald.shard_of(text)", SYNC)
