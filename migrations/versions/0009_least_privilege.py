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
  never a login); ``herald_writer`` holds what a backend's role needs to insert, and no
  more (not even reading other users' notifications); ``herald_node`` what the nodes
  need (it is a member of ``herald_writer``: the publish API inserts). Grant login roles
  membership: ``CREATE ROLE shop LOGIN IN ROLE herald_writer``.
* Existing grants: roles that could INSERT become members of ``herald_writer``; every
  right on Herald's objects that is not a ``herald_*`` role's is revoked, but the data
  rights on ``herald.notifications`` (TRIGGER, REFERENCES and TRUNCATE anywhere and
  anything on the counters, the relay's tables, the nodes, the sequence, the key or the
  functions are gone: a trigger on the counters ran as the owner). A trigger on a Herald
  table that is not Herald's stops the upgrade.
* Three trigger functions run as the owner, for ``herald.notifications`` only
  (``TG_RELID``), with EXECUTE for nobody but the owner (EXECUTE is checked when a
  trigger is created, not when it fires): ``assign_seq()`` (writers have no right on
  the counters at all; it also takes the row's id from ``herald.notifications_id_seq``,
  which is no longer an identity, so an id an INSERT names, OVERRIDING SYSTEM VALUE
  included, is overwritten), ``notify_inserted()`` (the relay's pointer table is the
  owner's: a writer's own pointer of 9,000 bytes once stalled the relay) and
  ``notify_frame()``. They also turn off, for their own duration, what would print
  their queries' values or the channel to the session (``debug_print_*``,
  ``trace_notify``, ``client_min_messages``): under 0008 any role read the channel's
  name that way, so it is renamed here.
* Each private-channel payload is prefixed with the HMAC-SHA256 of it (64 hex digits)
  under a key kept beside the channel's name: a node accepts a frame only with the right
  MAC, so knowing the channel's name (visible in ``pg_stat_activity`` to monitoring
  roles) is not enough to forge one.
* EXECUTE on every Herald function is revoked from PUBLIC and granted to the roles that
  call it; every function runs with ``search_path = pg_catalog, pg_temp``, so an
  overload or operator planted in another schema never runs in its place.
* What a writer could break under 0008 is repaired: the sequence starts past every id,
  each counter is at least its user's highest seq.
* ``created_at`` and ``expires_at`` must lie between the years 1 and 9999 (a node could
  not decode a row of the year 20000; existing ones are clamped); the relay's pointers
  are checked too.
* The link check refuses control and invisible-space characters anywhere and dot
  segments (``/..//evil.example`` resolves to ``//evil.example``, an off-site link);
  existing links that fail it are set to NULL, as revision 0006 did.
* An index for history by category.

A migrating role that is not a superuser must be a member of ``herald_owner`` (the
upgrade says so when it is not). Downgrade restores revision 0008's functions, the
identity column and the old checks, owned by the role that runs it; the roles stay, and
so does EXECUTE revoked from PUBLIC.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0009"
down_revision: Union[str, None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
# For the whole migration: the statements here run as the administrator, often a
# superuser, and a function or operator planted in a schema on its search_path (public,
# on servers where anyone may create there) would otherwise be picked over pg_catalog's.
# alembic names its version table with its schema (migrations/env.py).
PIN = "SET LOCAL search_path = pg_catalog, pg_temp"
PINNED = "SET search_path = pg_catalog, pg_temp"
# What the owner-run functions handle must not be printed to the session that fired
# them: a user may turn on the planner's debug output (which shows a query's constants,
# the key among them) and NOTIFY tracing (which shows the channel). Functions set them
# back for their own duration.
QUIET = (PINNED + " SET debug_print_plan = off SET debug_print_parse = off"
         " SET debug_print_rewritten = off SET trace_notify = off"
         " SET client_min_messages = warning")

# Role membership belongs to the server; a migrating role that is no superuser may grant
# it only with the ADMIN option (PostgreSQL 16): say what to do instead of failing
# obscurely. A temporary function, gone with the migration's session.
GRANT_ROLE = r"""
CREATE FUNCTION pg_temp.grant_role(role text, member text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_has_role(member, role, 'MEMBER') THEN
        RETURN;
    END IF;
    EXECUTE format('GRANT %I TO %s', role, member);
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role % cannot make % a member of %: as a superuser, GRANT % TO %; '
        'or migrate as a superuser', current_user, member, role, role, member;
END
$$
"""

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
    -- A migrating role that is not a superuser must be a member to hand objects over
    -- (and to migrate later: it keeps owning Herald's objects through herald_owner).
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'herald_owner', 'MEMBER') THEN
        BEGIN
            EXECUTE format('GRANT herald_owner TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role % cannot hand Herald''s objects to herald_owner: as a '
                'superuser, GRANT herald_owner TO %; or migrate as a superuser',
                current_user, current_user;
        END;
    END IF;
END
$$
"""

# What revision 0008 left in the two schemas. Anything else there (or pointing into them)
# was made by someone else, and taking it over would hand it the owner's rights: a
# trigger on the counters runs as the owner, a function in schema herald would become
# the owner's, a foreign key to the notifications stops their deletion. The upgrade
# stops and names it instead.
OWN_TABLES = ("herald.notifications", "herald.user_counters", "herald.relay",
              "herald.relay_pending", "herald.nodes", "herald_private.bus_key")
OWN_SEQUENCES = ("herald.notifications_id_seq", "herald.relay_id_seq")
OWN_FUNCTIONS = ("herald.assign_seq()", "herald.guard_identity()",
                 "herald.notify_inserted()", "herald.stamp_change()",
                 "herald.notify_changed()", "herald.notify_frame()", "herald.relay_batched()",
                 "herald.announce(text[],bigint[])", "herald.inline_candidate(bigint)",
                 "herald.relay_poll()", "herald.relay_poll(pg_snapshot)")
OWN_TRIGGERS = ("assign_seq", "guard_identity", "notify_inserted", "stamp_change",
                "notify_changed", "notify_frame")


def _quoted(names: tuple[str, ...]) -> str:
    return ", ".join(f"'{name}'" for name in names)


FOREIGN_OBJECTS = rf"""
DO $$
DECLARE
    found text;
BEGIN
    WITH schemas AS (SELECT oid FROM pg_namespace WHERE nspname IN ('herald', 'herald_private')),
    strangers AS (
        SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass AS what
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace IN (SELECT oid FROM schemas) AND NOT t.tgisinternal
          AND NOT (t.tgrelid = 'herald.notifications'::regclass
                   AND t.tgname IN ({_quoted(OWN_TRIGGERS)})
                   AND t.tgfoid::regproc::text = 'herald.' || t.tgname)
        UNION ALL
        SELECT 'relation ' || c.oid::regclass FROM pg_class c
        WHERE c.relnamespace IN (SELECT oid FROM schemas)
          AND NOT (c.relkind = 'r' AND c.oid::regclass::text IN ({_quoted(OWN_TABLES)}))
          AND NOT (c.relkind = 'S' AND c.oid::regclass::text IN ({_quoted(OWN_SEQUENCES)}))
          AND NOT (c.relkind = 'i' AND EXISTS (
                SELECT FROM pg_index i WHERE i.indexrelid = c.oid
                AND i.indrelid::regclass::text IN ({_quoted(OWN_TABLES)})))
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace IN (SELECT oid FROM schemas)
          AND p.oid::regprocedure::text NOT IN ({_quoted(OWN_FUNCTIONS)})
        UNION ALL
        SELECT 'type ' || t.oid::regtype FROM pg_type t
        WHERE t.typnamespace IN (SELECT oid FROM schemas) AND t.typrelid = 0
          AND NOT EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typelem AND e.typrelid <> 0)
        UNION ALL
        SELECT 'operator ' || o.oid::regoperator FROM pg_operator o
        WHERE o.oprnamespace IN (SELECT oid FROM schemas)
        UNION ALL
        SELECT 'rule ' || r.rulename || ' on ' || r.ev_class::regclass FROM pg_rewrite r
        JOIN pg_class c ON c.oid = r.ev_class WHERE c.relnamespace IN (SELECT oid FROM schemas)
        UNION ALL
        SELECT 'policy ' || p.polname || ' on ' || p.polrelid::regclass FROM pg_policy p
        JOIN pg_class c ON c.oid = p.polrelid WHERE c.relnamespace IN (SELECT oid FROM schemas)
        UNION ALL
        SELECT 'foreign key ' || k.conname || ' on ' || k.conrelid::regclass FROM pg_constraint k
        JOIN pg_class target ON target.oid = k.confrelid
        JOIN pg_class source ON source.oid = k.conrelid
        WHERE k.contype = 'f' AND target.relnamespace IN (SELECT oid FROM schemas)
          AND source.relnamespace NOT IN (SELECT oid FROM schemas)
        UNION ALL
        SELECT 'inheritance ' || i.inhrelid::regclass || ' of ' || i.inhparent::regclass
        FROM pg_inherits i JOIN pg_class child ON child.oid = i.inhrelid
        JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE child.relnamespace IN (SELECT oid FROM schemas)
           OR parent.relnamespace IN (SELECT oid FROM schemas)
        UNION ALL
        SELECT 'publication ' || p.pubname || ' of ' || r.prrelid::regclass
        FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
        JOIN pg_class c ON c.oid = r.prrelid WHERE c.relnamespace IN (SELECT oid FROM schemas)
    )
    SELECT string_agg(what, ', ' ORDER BY what) INTO found FROM strangers;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'objects that are not Herald''s in or on its schemas: %. Whoever '
            'made them could run code with the rights of whoever writes Herald''s tables, '
            'or stop their deletes (revision 0008 let writers become superuser): drop '
            'them and audit your roles, then migrate again', found;
    END IF;
END
$$
"""

# Nobody adds a trigger, a foreign key or a child table between the check below and the
# migration's own writes (which would fire it with the migrator's rights): the tables are
# locked first, for the rest of the migration's transaction.
LOCK_TABLES = ("LOCK TABLE " + ", ".join(OWN_TABLES) + " IN ACCESS EXCLUSIVE MODE")

# Default privileges in Herald's schemas would hand the objects created below (the id
# sequence) to whoever they name: they go, with a notice.
DEFAULT_ACLS = r"""
DO $$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT d.defaclrole::regrole AS owner, n.nspname AS schema,
               CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                    WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END
                   AS objects,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   AS grantee
        FROM pg_default_acl d JOIN pg_namespace n ON n.oid = d.defaclnamespace,
             aclexplode(d.defaclacl) a
        WHERE n.nspname IN ('herald', 'herald_private') AND a.grantee <> d.defaclrole
    LOOP
        RAISE NOTICE 'removing default privileges on % in schema % for %', item.objects,
            item.schema, item.grantee;
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s IN SCHEMA %I REVOKE ALL ON %s '
                       'FROM %s', item.owner, item.schema, item.objects, item.grantee);
    END LOOP;
END
$$
"""

# Herald's own objects (and nothing else: FOREIGN_OBJECTS made sure) to herald_owner.
OWNERSHIP = rf"""
DO $$
DECLARE
    item text;
    previous regrole := (SELECT relowner::regrole FROM pg_class
                         WHERE oid = 'herald.notifications'::regclass);
BEGIN
    -- The role that owned them (when not a superuser) keeps what it had, as a member.
    IF previous::text <> 'herald_owner'
       AND NOT (SELECT rolsuper FROM pg_roles WHERE oid = previous) THEN
        PERFORM pg_temp.grant_role('herald_owner', previous::text);
    END IF;
    ALTER SCHEMA herald OWNER TO herald_owner;
    ALTER SCHEMA herald_private OWNER TO herald_owner;
    FOREACH item IN ARRAY ARRAY[{_quoted(OWN_TABLES)}] LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO herald_owner', item);  -- sequences follow
    END LOOP;
    FOREACH item IN ARRAY ARRAY[{_quoted(OWN_FUNCTIONS)}] LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO herald_owner', item);
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
    IF (SELECT attidentity FROM pg_attribute WHERE attrelid = 'herald.notifications'::regclass
        AND attname = 'id') = '' THEN
        RETURN;  -- done by an earlier run interrupted after it committed (re-runnable)
    END IF;
    SELECT greatest(CASE WHEN is_called THEN last_value + 1 ELSE last_value END,
                    (SELECT coalesce(max(id), 0) + 1 FROM herald.notifications))
    INTO next_id FROM herald.notifications_id_seq;
    ALTER TABLE herald.notifications ALTER COLUMN id DROP IDENTITY;
    EXECUTE format('CREATE SEQUENCE herald.notifications_id_seq AS bigint START WITH %s',
                   next_id);
    ALTER SEQUENCE herald.notifications_id_seq OWNER TO herald_owner;
    ALTER SEQUENCE herald.notifications_id_seq OWNED BY herald.notifications.id;
END
$$
"""

ASSIGN_SEQ = rf"""
CREATE OR REPLACE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER {QUIET} AS $$
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
                             't', extract(epoch FROM n.created_at), 'f', {FRAME})::text
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
    -- A new channel name too: under revision 0008 any role could read the old one (NOTIFY
    -- tracing printed it), so it is no secret any more.
    UPDATE herald_private.bus_key
    SET mac_key = k, mac_inner = inner_pad, mac_outer = outer_pad,
        channel = 'herald_' || left(replace(gen_random_uuid()::text
                                            || gen_random_uuid()::text, '-', ''), 48)
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

# Times Python (and so a node) can decode: a row dated in the year 20000 made every fetch
# that included its user fail, and one dated 4000 BC every retention pass.
TIME_CHECKS = {
    "created_at_range": "created_at >= '0001-01-02' AND created_at < '9999-12-31'",
    "expires_at_range": "expires_at >= '0001-01-02' AND expires_at < '9999-12-31'",
}
CLAMP_TIMES = """
UPDATE herald.notifications
SET created_at = least(greatest(created_at, '0001-01-02'), '9999-12-30'),
    expires_at = least(greatest(expires_at, '0001-01-02'), '9999-12-30')
WHERE NOT (created_at >= '0001-01-02' AND created_at < '9999-12-31')
   OR NOT (expires_at >= '0001-01-02' AND expires_at < '9999-12-31')
"""
# The pointer table holds what the owner-run trigger writes, nothing else.
PENDING_CHECKS = {
    "user_id_length": "char_length(user_id) BETWEEN 1 AND 255",
    "seq_positive": "seq > 0",
}

CATEGORY_INDEX = ("ix_notifications_user_id_category_seq",
                  "ON herald.notifications (user_id, category, seq) WHERE category IS NOT NULL")

# Every function, who may call it. Trigger functions: nobody (EXECUTE is checked when a
# trigger is created, not when it fires). The helpers: the roles whose statements run them.
FUNCTIONS = {
    "assign_seq()": (), "guard_identity()": (), "stamp_change()": (),
    "notify_changed()": (), "notify_inserted()": (), "notify_frame()": (),
    "relay_batched()": (),  # only the owner-run triggers call it
    "announce(text[], bigint[])": ("herald_node",),  # relay_poll()
    "inline_candidate(bigint)": ("herald_writer",),  # notify_frame's WHEN, as the writer
    "relay_poll()": ("herald_node",),
    "relay_poll(pg_snapshot)": ("herald_node",),
}
# assign_seq, notify_inserted and notify_frame are redefined above with the pinned path.
REDEFINED = ("assign_seq()", "notify_inserted()", "notify_frame()")

# The herald_* roles' rights start from nothing (a downgrade to 0008 gave herald_writer
# 0008's wider ones), before the functions' and the tables' grants below.
RESET_GRANTS = tuple(
    f"REVOKE ALL ON ALL {kind} IN SCHEMA {schema} FROM herald_writer, herald_node CASCADE"
    for kind in ("TABLES", "SEQUENCES", "FUNCTIONS") for schema in ("herald", "herald_private"))

GRANTS = (
    "GRANT USAGE ON SCHEMA herald TO herald_writer",
    # What RETURNING id, seq, created_at needs; a writer reads nobody's notifications,
    # nor their users or idempotency keys.
    "GRANT INSERT, SELECT (id, seq, created_at) ON herald.notifications TO herald_writer",
    # (the membership is the server's: granted once, by whoever may)
    "SELECT pg_temp.grant_role('herald_writer', 'herald_node')",
    "GRANT SELECT ON herald.notifications TO herald_node",
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

# Roles that could INSERT keep working, as members of herald_writer (NOINHERIT ones must
# SET ROLE herald_writer: a notice names them). Every right on Herald's objects that is
# not a herald_* role's is revoked, but the data rights on herald.notifications
# (SELECT, INSERT, UPDATE, DELETE: a backend may mark rows read or erase them): no role
# keeps TRIGGER, REFERENCES or TRUNCATE anywhere, or any right on the counters, the
# relay's tables, the nodes, the sequence, the key or a function.
EXISTING_GRANTS = r"""
DO $$
DECLARE
    item record;
    updates boolean;
BEGIN
    -- A role that could renew the relay's lease may have run nodes. It is not made a
    -- node here (herald_node reads the key, which no grant under 0008 gave): say so.
    FOR item IN
        SELECT DISTINCT a.grantee::regrole AS role
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'herald.relay'::regclass AND a.privilege_type = 'UPDATE'
          AND a.grantee <> 0 AND a.grantee <> c.relowner
          AND a.grantee::regrole::text NOT IN ('herald_owner', 'herald_writer', 'herald_node')
    LOOP
        RAISE NOTICE 'role % could renew the relay''s lease: if nodes log in as it, '
            'GRANT herald_node TO %', item.role, item.role;
    END LOOP;
    FOR item IN
        SELECT DISTINCT r.oid::regrole AS role, r.rolinherit AS inherits
        FROM pg_roles r
        WHERE r.rolname NOT IN ('herald_owner', 'herald_writer', 'herald_node')
          AND r.oid <> (SELECT relowner FROM pg_class
                        WHERE oid = 'herald.notifications'::regclass)
          AND NOT r.rolsuper
          AND (EXISTS (SELECT FROM pg_class c, aclexplode(c.relacl) a
                       WHERE c.oid = 'herald.notifications'::regclass
                         AND a.privilege_type = 'INSERT' AND a.grantee = r.oid)
               OR EXISTS (SELECT FROM pg_attribute t, aclexplode(t.attacl) a
                          WHERE t.attrelid = 'herald.notifications'::regclass
                            AND a.privilege_type = 'INSERT' AND a.grantee = r.oid))
    LOOP
        PERFORM pg_temp.grant_role('herald_writer', item.role::text);
        IF NOT item.inherits THEN
            RAISE NOTICE 'role % is NOINHERIT: it must SET ROLE herald_writer to publish',
                item.role;
        END IF;
        -- What 0008's README granted, and more, becomes the membership's narrower
        -- rights: no reading of every user's rows, no UPDATE of the xids the change
        -- events are checked against. UPDATE of the read state stays where it was.
        updates := has_any_column_privilege(item.role, 'herald.notifications', 'UPDATE');
        EXECUTE format('REVOKE SELECT, INSERT, UPDATE ON herald.notifications FROM %s '
                       'CASCADE', item.role);
        EXECUTE format('REVOKE GRANT OPTION FOR ALL ON herald.notifications FROM %s '
                       'CASCADE', item.role);
        IF updates THEN  -- (a REVOKE on the table takes the columns' grants too)
            EXECUTE format('GRANT UPDATE (read_at, archived_at) ON herald.notifications '
                           'TO %s', item.role);
        END IF;
        RAISE NOTICE 'role % now writes as a member of herald_writer (its SELECT on every '
            'row of herald.notifications is gone)', item.role;
    END LOOP;
    FOR item IN
        SELECT DISTINCT c.oid::regclass AS object, c.relkind AS kind, c.relname AS name,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   AS grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.relnamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
          AND a.grantee <> c.relowner
          AND (a.grantee = 0 OR a.grantee::regrole::text
               NOT IN ('herald_owner', 'herald_writer', 'herald_node'))
    LOOP
        IF item.object = 'herald.notifications'::regclass AND item.grantee = 'PUBLIC' THEN
            -- PUBLIC is every role of the server: no right on anybody's notifications.
            EXECUTE format('REVOKE ALL ON %s FROM PUBLIC CASCADE', item.object);
            RAISE NOTICE 'PUBLIC''s rights on herald.notifications are revoked';
        ELSIF item.object = 'herald.notifications'::regclass THEN
            updates := has_any_column_privilege(item.grantee, 'herald.notifications',
                                                'UPDATE');
            EXECUTE format('REVOKE TRIGGER, REFERENCES, TRUNCATE, UPDATE ON %s FROM %s '
                           'CASCADE', item.object, item.grantee);
            IF updates THEN  -- the read state, not the xids change events are checked by
                EXECUTE format('GRANT UPDATE (read_at, archived_at) ON %s TO %s',
                               item.object, item.grantee);
            END IF;
        ELSIF item.kind = 'S' THEN
            EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s CASCADE', item.object,
                           item.grantee);
        ELSE
            EXECUTE format('REVOKE ALL ON %s FROM %s CASCADE', item.object, item.grantee);
        END IF;
    END LOOP;
    -- Column grants: all of them on the other tables, and on the notifications all but
    -- SELECT and UPDATE of the read state (and all of PUBLIC's): a foreign key to a row
    -- stops its deletion, an UPDATE of the xids forges change events.
    FOR item IN
        SELECT DISTINCT t.attrelid::regclass AS object, t.attname AS name,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   AS grantee,
               CASE WHEN c.oid = 'herald.notifications'::regclass THEN a.privilege_type
                    ELSE 'ALL' END AS privilege
        FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid, aclexplode(t.attacl) a
        WHERE c.relnamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
          AND (a.grantee = 0 OR a.grantee::regrole::text
               NOT IN ('herald_owner', 'herald_writer', 'herald_node'))
          AND (c.oid <> 'herald.notifications'::regclass OR a.grantee = 0
               OR NOT (a.privilege_type = 'SELECT'
                       OR (a.privilege_type = 'UPDATE'
                           AND t.attname IN ('read_at', 'archived_at'))))
    LOOP
        EXECUTE format('REVOKE %s (%I) ON %s FROM %s CASCADE', item.privilege, item.name,
                       item.object, item.grantee);
    END LOOP;
    FOR item IN
        SELECT DISTINCT n.nspname AS name,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   AS grantee, a.privilege_type AS privilege
        FROM pg_namespace n, aclexplode(n.nspacl) a
        WHERE n.nspname IN ('herald', 'herald_private') AND a.grantee <> n.nspowner
          AND (a.grantee = 0 OR a.grantee::regrole::text
               NOT IN ('herald_owner', 'herald_writer', 'herald_node'))
          AND (n.nspname = 'herald_private' OR a.privilege_type = 'CREATE')
    LOOP
        EXECUTE format('REVOKE %s ON SCHEMA %I FROM %s CASCADE', item.privilege, item.name,
                       item.grantee);
    END LOOP;
END
$$
"""

# Damage a writer could do under revision 0008 that would outlive it: ids planted ahead
# of the sequence (ID_SEQUENCE starts past them) and counters moved back below a user's
# rows (raised to the highest seq each user has).
COUNTERS_REPAIR = r"""
INSERT INTO herald.user_counters AS c (user_id, last_seq)
SELECT user_id, max(seq) FROM herald.notifications GROUP BY user_id
ON CONFLICT (user_id) DO UPDATE SET last_seq = excluded.last_seq
WHERE c.last_seq < excluded.last_seq
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


# Before the check, and committed: nobody but the owner creates in Herald's schemas from
# now on (a role with 0008's CREATE there could otherwise add an overload after the check,
# and every insert would fail as ambiguous).
NO_CREATE = r"""
DO $$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT n.nspname AS schema,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
                   AS grantee
        FROM pg_namespace n, aclexplode(n.nspacl) a
        WHERE n.nspname IN ('herald', 'herald_private') AND a.privilege_type = 'CREATE'
          AND a.grantee <> n.nspowner
    LOOP
        EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM %s CASCADE', item.schema,
                       item.grantee);
    END LOOP;
END
$$
"""

# At the very end (after the index build, which waits out every older transaction):
# nothing but Herald's own objects, all of them the owner's.
OWNED_CHECK = r"""
DO $$
DECLARE
    found text;
BEGIN
    SELECT string_agg(what, ', ') INTO found FROM (
        SELECT 'relation ' || c.oid::regclass AS what FROM pg_class c
        WHERE c.relnamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
          AND c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p')
          AND c.relowner <> 'herald_owner'::regrole
        UNION ALL
        SELECT 'function ' || p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace IN ('herald'::regnamespace, 'herald_private'::regnamespace)
          AND p.proowner <> 'herald_owner'::regrole
    ) AS strangers;
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'made in Herald''s schemas while this migration ran: %. Drop it '
            'and audit your roles, then migrate again', found;
    END IF;
END
$$
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        _run(NO_CREATE)  # (the session's path is pinned: migrations/env.py)
    _run(LOCK_TIMEOUT, PIN, GRANT_ROLE, ROLES, LOCK_TABLES, FOREIGN_OBJECTS, DEFAULT_ACLS,
         OWNERSHIP, ID_SEQUENCE, EXISTING_GRANTS, COUNTERS_REPAIR, ASSIGN_SEQ, NOTIFY_INSERTED,
         "ALTER TABLE herald_private.bus_key ADD COLUMN IF NOT EXISTS mac_key bytea, "
         "ADD COLUMN IF NOT EXISTS mac_inner bytea, ADD COLUMN IF NOT EXISTS mac_outer bytea",
         MAC_KEY, NOTIFY_FRAME, *RESET_GRANTS)
    for function, callers in FUNCTIONS.items():
        if function not in REDEFINED:
            _run(f"ALTER FUNCTION herald.{function} {PINNED}")
        _run(f"REVOKE ALL ON FUNCTION herald.{function} FROM PUBLIC")
        for role in callers:
            _run(f"GRANT EXECUTE ON FUNCTION herald.{function} TO {role}")
    _run(*GRANTS, CLAMP_TIMES)
    for name, check in TIME_CHECKS.items():
        _run(f"ALTER TABLE herald.notifications DROP CONSTRAINT IF EXISTS "
             f"ck_notifications_{name}, ADD CONSTRAINT ck_notifications_{name} "
             f"CHECK ({check}) NOT VALID")
    for name, check in PENDING_CHECKS.items():
        _run(f"ALTER TABLE herald.relay_pending DROP CONSTRAINT IF EXISTS "
             f"ck_relay_pending_{name}, ADD CONSTRAINT ck_relay_pending_{name} "
             f"CHECK ({check})")
    _replace_link_check(LINK_PATTERN)
    _run(f"UPDATE herald.notifications SET link = NULL WHERE link !~* '{LINK_PATTERN}'")
    with op.get_context().autocommit_block():
        for name in ("link_url", *TIME_CHECKS):
            _run(f"ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_{name}")
        name, definition = CATEGORY_INDEX
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{name}",  # left invalid by a failure
             f"CREATE INDEX CONCURRENTLY {name} {definition}")
    _run(PIN, FOREIGN_OBJECTS, OWNED_CHECK)


def downgrade() -> None:
    """Revision 0008's schema again, Herald's own objects (by name: nothing else that
    herald_owner may own) owned by the role that runs this, as earlier revisions create
    theirs. What stays: the roles, EXECUTE on every function
    revoked from PUBLIC (0008's owner-run functions, attached by a writer to a table of
    its own, were the way to the owner's rights: no role can attach them now), and the
    rotated channel name. herald_writer gets the grants 0008's README listed; 0008's
    known weaknesses (writers can move counters and name ids; the channel's name shows
    in NOTIFY tracing, and frames on it are trusted) come back with it."""
    with op.get_context().autocommit_block():
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{CATEGORY_INDEX[0]}")
    _run(LOCK_TIMEOUT, PIN)
    _replace_link_check(OLD_LINK_PATTERN)
    for name in TIME_CHECKS:
        _run(f"ALTER TABLE herald.notifications DROP CONSTRAINT ck_notifications_{name}")
    for name in PENDING_CHECKS:
        _run(f"ALTER TABLE herald.relay_pending DROP CONSTRAINT ck_relay_pending_{name}")
    _run(*(f"ALTER SCHEMA {name} OWNER TO CURRENT_USER" for name in ("herald", "herald_private")),
         *(f"ALTER TABLE {name} OWNER TO CURRENT_USER" for name in OWN_TABLES),
         *(f"ALTER FUNCTION {name} OWNER TO CURRENT_USER" for name in OWN_FUNCTIONS),
         IDENTITY_V8, ASSIGN_SEQ_V8, NOTIFY_INSERTED_V8, NOTIFY_FRAME_V8,
         "ALTER TABLE herald_private.bus_key DROP COLUMN mac_key, DROP COLUMN mac_inner, "
         "DROP COLUMN mac_outer")
    for function in FUNCTIONS:
        if function not in REDEFINED:
            _run(f"ALTER FUNCTION herald.{function} RESET search_path")
        if function in ("relay_batched()", "announce(text[], bigint[])",
                        "inline_candidate(bigint)"):  # 0008's writers call them
            _run(f"GRANT EXECUTE ON FUNCTION herald.{function} TO herald_writer")
    _run("REVOKE ALL ON ALL TABLES IN SCHEMA herald FROM herald_node",
         "REVOKE ALL ON SCHEMA herald_private FROM herald_node",
         "REVOKE ALL ON herald_private.bus_key FROM herald_node",
         "REVOKE ALL ON public.herald_alembic_version FROM herald_node",
         "REVOKE ALL ON FUNCTION herald.relay_poll(), herald.relay_poll(pg_snapshot) "
         "FROM herald_node",
         "GRANT SELECT, INSERT ON herald.notifications TO herald_writer",
         "GRANT SELECT, INSERT, UPDATE ON herald.user_counters TO herald_writer",
         "GRANT SELECT ON herald.relay TO herald_writer")
    with op.get_context().autocommit_block():
        _run("ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_link_url")
