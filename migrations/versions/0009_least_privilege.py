"""least privilege: Herald's objects owned by a NOLOGIN role, no definer a writer can reach,
a counter only Herald advances, frames authenticated, links without hidden characters

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

Why: a role holding the writer grants README gave could become superuser. The owner-run
(SECURITY DEFINER) ``notify_inserted()`` was executable by PUBLIC and accepted any table,
so a writer attached it to a temporary table whose ``seq`` column had a type of its own
with an assignment cast to bigint: the cast ran the writer's code with the owner's
rights, and the owner was the superuser that migrated. A writer could also break
publishing for others: ``UPDATE herald.user_counters SET last_seq = 0`` (its grant
allowed it) made every later insert for that user a duplicate key, and ``INSERT ...
OVERRIDING SYSTEM VALUE`` with future ids made everyone's next inserts fail.

What changes:

* Three NOLOGIN roles, created when missing (roles belong to the server, not to one
  database): ``herald_owner`` owns every Herald object from now on (never a superuser,
  never a login); ``herald_writer`` holds what a backend's role needs to insert;
  ``herald_node`` what the nodes need (it is a member of ``herald_writer``: the publish
  API inserts). Grant login roles membership: ``GRANT herald_writer TO shop``.
  Roles that could INSERT before are made members of ``herald_writer``, so they keep
  working, and lose every direct right on ``herald.user_counters``.
* ``assign_seq()`` runs as the owner (writers have no right on the counters at all), for
  ``herald.notifications`` only (``TG_RELID``), and assigns the row's id itself from
  ``herald.notifications_id_seq``: the id column is no longer an identity column, so an
  explicit id, with or without OVERRIDING SYSTEM VALUE, is overwritten.
* ``notify_inserted()`` runs as the inserting role (writers get INSERT on the pointer
  table instead), for ``herald.notifications`` only.
* ``notify_frame()`` still runs as the owner (only the owner and the nodes may know the
  key), for ``herald.notifications`` only, and prefixes each payload with an
  HMAC-SHA256 of it (64 hex digits) under a key kept beside the channel name: a node
  accepts a frame only if the MAC is right, so knowing the channel's name (visible in
  ``pg_stat_activity`` to monitoring roles) is not enough to forge one.
* EXECUTE on every Herald function is revoked from PUBLIC and granted to the roles that
  call it; every function runs with ``search_path = pg_catalog, pg_temp``, so an
  overload or operator planted in another schema never runs in its place.
* The link check refuses control and invisible-space characters anywhere and dot
  segments (``/..//evil.example`` resolves to ``//evil.example``, an off-site link);
  existing links that fail it are set to NULL, as revision 0006 did.
* An index for history by category.

Downgrade restores revision 0008's functions, the identity column and the old link
check, hands the objects back to the role that runs it and gives ``herald_writer`` the
grants 0008's README listed; the three roles stay (other databases may use them).
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0009"
down_revision: Union[str, None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
PINNED = "SET search_path = pg_catalog, pg_temp"

ROLES = r"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_owner') THEN
        CREATE ROLE herald_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_writer') THEN
        CREATE ROLE herald_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_node') THEN
        CREATE ROLE herald_node NOLOGIN;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'herald_owner'
               AND (rolsuper OR rolcanlogin)) THEN
        RAISE EXCEPTION 'role herald_owner must be NOLOGIN and not a superuser';
    END IF;
    -- A migrating role that is not a superuser must be a member to hand objects over.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT herald_owner TO %I', current_user);
    END IF;
END
$$
"""

# Every object of both schemas: the schemas, tables (their sequences follow), functions.
OWNERSHIP = r"""
DO $$
DECLARE
    item record;
BEGIN
    ALTER SCHEMA herald OWNER TO herald_owner;
    ALTER SCHEMA herald_private OWNER TO herald_owner;
    FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
                WHERE c.relnamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
                  AND c.relkind = 'r' LOOP  -- a table's sequences follow it
        EXECUTE format('ALTER TABLE %s OWNER TO herald_owner', item.name);
    END LOOP;
    FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p
                WHERE p.pronamespace = 'herald'::regnamespace LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO herald_owner', item.name);
    END LOOP;
END
$$
"""

# The id is taken by assign_seq(), not by a column default: an explicit id is overwritten.
ID_SEQUENCE = r"""
DO $$
DECLARE
    next_id bigint;
BEGIN
    SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END INTO next_id
    FROM herald.notifications_id_seq;
    ALTER TABLE herald.notifications ALTER COLUMN id DROP IDENTITY;
    EXECUTE format('CREATE SEQUENCE herald.notifications_id_seq AS bigint START WITH %s '
                   'OWNED BY herald.notifications.id', next_id);
END
$$
"""

ASSIGN_SEQ = rf"""
CREATE OR REPLACE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
DECLARE
    current_seq bigint;
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'herald.assign_seq() runs only as herald.notifications'' trigger';
    END IF;
    -- Whatever id the INSERT named (OVERRIDING SYSTEM VALUE included): a future id would
    -- make somebody else's insert fail on the primary key.
    NEW.id := nextval('herald.notifications_id_seq');
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
        -- Leave the row to the table's own NOT NULL / CHECK constraints, which name the
        -- offending column; never create a counter for an invalid user id.
        NEW.seq := 0;
        RETURN NEW;
    END IF;
    IF NEW.data IS NULL THEN
        NEW.data := '{{}}'::jsonb;
    END IF;
    IF NEW.idempotency_key IS NULL THEN
        INSERT INTO herald.user_counters AS c (user_id, last_seq)
        VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq INTO NEW.seq;
        RETURN NEW;
    END IF;
    -- Keyed: lock the user's counter, then look for the key, then take a seq.
    INSERT INTO herald.user_counters (user_id, last_seq) VALUES (NEW.user_id, 0)
    ON CONFLICT (user_id) DO NOTHING;
    SELECT last_seq INTO current_seq FROM herald.user_counters
    WHERE user_id = NEW.user_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM herald.notifications
               WHERE user_id = NEW.user_id AND idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;  -- already published: skip silently, the caller reads the original
    END IF;
    UPDATE herald.user_counters SET last_seq = current_seq + 1 WHERE user_id = NEW.user_id;
    NEW.seq := current_seq + 1;
    RETURN NEW;
END
$$
"""

NOTIFY_INSERTED = rf"""
CREATE OR REPLACE FUNCTION herald.notify_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER {PINNED} AS $$
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
$$
"""


def _iso(column: str) -> str:
    # As app/store.py's _iso (copied, not imported: a revision must not change later).
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 = 0 "
            f"THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            f"ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END")


FRAME = f"""json_build_object(
    'type', 'notification', 'id', n.id, 'seq', n.seq, 'title', n.title, 'body', n.body,
    'data', n.data, 'link', n.link, 'category', n.category,
    'created_at', {_iso("n.created_at")}, 'expires_at', {_iso("n.expires_at")},
    'read', n.read_at IS NOT NULL, 'archived', n.archived_at IS NOT NULL)::text"""

# HMAC-SHA256 (RFC 2104) with the two padded keys stored: sha256(outer || sha256(inner || m)).
NOTIFY_FRAME = rf"""
CREATE OR REPLACE FUNCTION herald.notify_frame() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
DECLARE
    key record;
    payload text;
BEGIN
    IF TG_RELID <> 'herald.notifications'::regclass OR TG_OP <> 'INSERT'
       OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'herald.notify_frame() runs only as herald.notifications'' trigger';
    END IF;
    IF herald.relay_batched() THEN
        RETURN NULL;  -- the relay's batches keep NOTIFY out of the writers' commits
    END IF;
    SELECT json_build_object('k', 'frame', 'u', n.user_id, 's', n.seq,
                             't', extract(epoch FROM n.created_at), 'f', {FRAME})::text
    INTO payload FROM herald.notifications AS n WHERE n.id = NEW.id AND n.expires_at IS NULL;
    SELECT channel, mac_inner, mac_outer INTO key FROM herald_private.bus_key WHERE id = 1;
    -- 8000 bytes is NOTIFY's cap, 64 of them the MAC; a larger frame is fetched.
    IF payload IS NOT NULL AND key.channel IS NOT NULL AND octet_length(payload) < 7800 THEN
        PERFORM pg_notify(key.channel, encode(sha256(key.mac_outer || sha256(
            key.mac_inner || convert_to(payload, 'UTF8'))), 'hex') || payload);
    END IF;
    RETURN NULL;
END
$$
"""

# A 64-byte key (four UUIDs: 488 random bits), and its HMAC pads, computed once here.
MAC_KEY = r"""
DO $$
DECLARE
    k bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text
                              || gen_random_uuid()::text || gen_random_uuid()::text,
                              '-', ''), 'hex');
    inner_pad bytea := k;
    outer_pad bytea := k;
BEGIN
    FOR i IN 0 .. 63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(k, i) # 54);   -- 0x36
        outer_pad := set_byte(outer_pad, i, get_byte(k, i) # 92);   -- 0x5c
    END LOOP;
    UPDATE herald_private.bus_key SET mac_key = k, mac_inner = inner_pad, mac_outer = outer_pad
    WHERE id = 1;
END
$$
"""

# Characters no link may hold: controls (C0, DEL, C1), spaces including the invisible
# ones, and the backslash (browsers read it as a slash; they also drop tabs and newlines).
_BAD = (r"\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
        r"\\")
# Literals on purpose: a revision must not change when app.models does.
LINK_PATTERN = (r"^(?!.*(^|/)(\.|%2e){1,2}([/?#]|$))"
                rf"(https?://[^{_BAD}]+|/(?![/\\])[^{_BAD}]*)$")
OLD_LINK_PATTERN = r"^(https?://[^\s\\]+|/(?![/\\])[^\s\\]*)$"

CATEGORY_INDEX = ("ix_notifications_user_id_category_seq",
                  "ON herald.notifications (user_id, category, seq) WHERE category IS NOT NULL")

# Every function, who may call it. Trigger functions: nobody (EXECUTE is checked when a
# trigger is created, not when it fires). The helpers: the roles whose statements run them.
FUNCTIONS = {
    "assign_seq()": (), "guard_identity()": (), "stamp_change()": (),
    "notify_changed()": (), "notify_inserted()": (), "notify_frame()": (),
    "relay_batched()": ("herald_writer",),
    "announce(text[], bigint[])": ("herald_writer",),
    "inline_candidate(bigint)": ("herald_writer",),
    "relay_poll()": ("herald_node",),
    "relay_poll(pg_snapshot)": ("herald_node",),
}
# assign_seq, notify_inserted and notify_frame are redefined above with the pinned path.
REDEFINED = ("assign_seq()", "notify_inserted()", "notify_frame()")

GRANTS = (
    "GRANT USAGE ON SCHEMA herald TO herald_writer",
    "GRANT SELECT, INSERT ON herald.notifications TO herald_writer",
    "GRANT SELECT ON herald.relay TO herald_writer",
    "GRANT INSERT ON herald.relay_pending TO herald_writer",
    "GRANT herald_writer TO herald_node",
    "GRANT UPDATE (delivered_at, read_at, archived_at), DELETE ON herald.notifications "
    "TO herald_node",
    "GRANT SELECT ON herald.user_counters TO herald_node",
    "GRANT SELECT, UPDATE ON herald.relay TO herald_node",
    "GRANT SELECT, DELETE ON herald.relay_pending TO herald_node",
    "GRANT SELECT ON herald.notifications_id_seq TO herald_node",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON herald.nodes TO herald_node",
    "GRANT USAGE ON SCHEMA herald_private TO herald_node",
    "GRANT SELECT (id, channel, mac_key) ON herald_private.bus_key TO herald_node",
    "GRANT SELECT ON public.herald_alembic_version TO herald_node",
)

# Roles that could insert keep working as members of herald_writer; nobody but the owner
# keeps a direct right to change the counters.
EXISTING_WRITERS = r"""
DO $$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT DISTINCT a.grantee::regrole AS role
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'herald.notifications'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> 0 AND a.grantee <> c.relowner
          AND a.grantee::regrole::text NOT IN ('herald_owner', 'herald_writer', 'herald_node')
    LOOP
        EXECUTE format('GRANT herald_writer TO %s', item.role);
    END LOOP;
    FOR item IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text
                        END AS role
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'herald.user_counters'::regclass AND a.grantee <> c.relowner
          AND a.privilege_type <> 'SELECT'
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON herald.user_counters '
                       'FROM %s', item.role);
    END LOOP;
END
$$
"""

# --- revision 0008's objects, restored by downgrade() (copied, not imported) ---------------

ASSIGN_SEQ_V8 = r"""
CREATE OR REPLACE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current_seq bigint;
BEGIN
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
        -- Leave the row to the table's own NOT NULL / CHECK constraints, which name the
        -- offending column; never create a counter for an invalid user id.
        NEW.seq := 0;
        RETURN NEW;
    END IF;
    IF NEW.data IS NULL THEN
        NEW.data := '{}'::jsonb;
    END IF;
    IF NEW.idempotency_key IS NULL THEN
        INSERT INTO herald.user_counters AS c (user_id, last_seq)
        VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq INTO NEW.seq;
        RETURN NEW;
    END IF;
    -- Keyed: lock the user's counter, then look for the key, then take a seq.
    INSERT INTO herald.user_counters (user_id, last_seq) VALUES (NEW.user_id, 0)
    ON CONFLICT (user_id) DO NOTHING;
    SELECT last_seq INTO current_seq FROM herald.user_counters
    WHERE user_id = NEW.user_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM herald.notifications
               WHERE user_id = NEW.user_id AND idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;  -- already published: skip silently, the caller reads the original
    END IF;
    UPDATE herald.user_counters SET last_seq = current_seq + 1 WHERE user_id = NEW.user_id;
    NEW.seq := current_seq + 1;
    RETURN NEW;
END
$$;
"""

NOTIFY_INSERTED_V8 = r"""
CREATE OR REPLACE FUNCTION herald.notify_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
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
$$;
"""

NOTIFY_FRAME_V8 = rf"""
CREATE OR REPLACE FUNCTION herald.notify_frame() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    private text;
    payload text;
BEGIN
    IF TG_TABLE_SCHEMA <> 'herald' OR TG_TABLE_NAME <> 'notifications' THEN
        RETURN NULL;  -- only ever the trigger below (EXECUTE is revoked from PUBLIC too)
    END IF;
    IF herald.relay_batched() THEN
        RETURN NULL;  -- the relay's batches keep NOTIFY out of the writers' commits
    END IF;
    SELECT json_build_object('k', 'frame', 'u', n.user_id, 's', n.seq,
                             't', extract(epoch FROM n.created_at), 'f', {FRAME})::text
    INTO payload FROM herald.notifications AS n WHERE n.id = NEW.id AND n.expires_at IS NULL;
    SELECT channel INTO private FROM herald_private.bus_key WHERE id = 1;
    -- 8000 bytes is NOTIFY's cap; a larger frame is fetched, as every other row is.
    IF payload IS NOT NULL AND private IS NOT NULL AND octet_length(payload) < 7900 THEN
        PERFORM pg_notify(private, payload);
    END IF;
    RETURN NULL;
END
$$;
"""

IDENTITY_V8 = r"""
DO $$
DECLARE
    next_id bigint;
BEGIN
    SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END INTO next_id
    FROM herald.notifications_id_seq;
    DROP SEQUENCE herald.notifications_id_seq;
    EXECUTE format('ALTER TABLE herald.notifications ALTER COLUMN id ADD GENERATED ALWAYS '
                   'AS IDENTITY (START WITH %s)', next_id);
END
$$
"""


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def _replace_link_check(pattern: str) -> None:
    _run("ALTER TABLE herald.notifications DROP CONSTRAINT IF EXISTS ck_notifications_link_url, "
         "ADD CONSTRAINT ck_notifications_link_url "
         f"CHECK (char_length(link) <= 2048 AND link ~* '{pattern}') NOT VALID")


def upgrade() -> None:
    _run(LOCK_TIMEOUT, ROLES, ID_SEQUENCE, ASSIGN_SEQ, NOTIFY_INSERTED,
         "ALTER TABLE herald_private.bus_key ADD COLUMN mac_key bytea, "
         "ADD COLUMN mac_inner bytea, ADD COLUMN mac_outer bytea", MAC_KEY, NOTIFY_FRAME)
    for function, callers in FUNCTIONS.items():
        if function not in REDEFINED:
            _run(f"ALTER FUNCTION herald.{function} {PINNED}")
        _run(f"REVOKE ALL ON FUNCTION herald.{function} FROM PUBLIC")
        for role in callers:
            _run(f"GRANT EXECUTE ON FUNCTION herald.{function} TO {role}")
    _run(OWNERSHIP, *GRANTS, EXISTING_WRITERS)
    _replace_link_check(LINK_PATTERN)
    _run(f"UPDATE herald.notifications SET link = NULL WHERE link !~* '{LINK_PATTERN}'")
    with op.get_context().autocommit_block():
        _run("ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_link_url")
        name, definition = CATEGORY_INDEX
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{name}",  # left invalid by a failure
             f"CREATE INDEX CONCURRENTLY {name} {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{CATEGORY_INDEX[0]}")
    _run(LOCK_TIMEOUT)
    _replace_link_check(OLD_LINK_PATTERN)
    _run("REASSIGN OWNED BY herald_owner TO CURRENT_USER",
         IDENTITY_V8, ASSIGN_SEQ_V8, NOTIFY_INSERTED_V8, NOTIFY_FRAME_V8,
         "ALTER TABLE herald_private.bus_key DROP COLUMN mac_key, DROP COLUMN mac_inner, "
         "DROP COLUMN mac_outer")
    for function in FUNCTIONS:
        if function not in REDEFINED:
            _run(f"ALTER FUNCTION herald.{function} RESET search_path")
        _run(f"GRANT EXECUTE ON FUNCTION herald.{function} TO PUBLIC")
    _run("REVOKE EXECUTE ON FUNCTION herald.notify_frame() FROM PUBLIC",
         "REVOKE ALL ON ALL TABLES IN SCHEMA herald FROM herald_node",
         "REVOKE ALL ON SCHEMA herald_private FROM herald_node",
         "REVOKE ALL ON herald_private.bus_key FROM herald_node",
         "REVOKE ALL ON public.herald_alembic_version FROM herald_node",
         "REVOKE ALL ON herald.relay_pending FROM herald_writer",
         "GRANT SELECT, INSERT, UPDATE ON herald.user_counters TO herald_writer")
    with op.get_context().autocommit_block():
        _run("ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_link_url")
