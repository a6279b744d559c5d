"""inline frames: a single-row insert also sends its rendered frame, on a private channel

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

Why: at moderate rates every row is announced by its own transaction's NOTIFY, and the
node holding the user's socket then spent a database round trip (a query, its reply,
and the backend's wake-up) fetching the very row the trigger had in hand. That fetch
was a quarter of a node's CPU per notification (py-spy, docs/benchmarks.md).

What changes:

* ``herald_private.bus_key`` (one row, in a schema of its own with no USAGE for anyone
  but the owner) holds a channel name made of 184 random bits. Only the owner (and roles
  it grants USAGE and SELECT) know it, so only they can LISTEN or NOTIFY there: a payload
  on it is trusted, unlike one on ``herald``, which any role can send and read.
* A deferred constraint trigger, ``notify_frame``, fires at COMMIT for the first row
  without ``expires_at`` a transaction inserted and, in direct mode, sends
  ``{"k":"frame","u":user,"s":seq,"t":created epoch,"f":"<notification frame text>"}``
  on the private channel, rendered from the row as the transaction leaves it (nothing if
  it deleted the row again), when it fits in a NOTIFY. The pointer on ``herald`` still
  goes out as before: a node listening on both delivers the frame as it stands (its
  predecessor is ``seq - 1``, app/hub.py) and needs no fetch; one that cannot read the
  key, or runs older code, fetches. A transaction that runs ``SET CONSTRAINTS ALL
  IMMEDIATE`` makes it fire at the end of that INSERT instead: a later change to that row
  in the same transaction then reaches clients only as read/archive events, and a later
  DELETE of it is not taken back (README, *Inline frames*).
* The frame rendering is a copy of ``app/store.py``'s ``FRAME``;
  tests/test_inline.py holds the two equal.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0008"
down_revision: Union[str, None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"

# gen_random_uuid() draws from the server's strong random source: 32 hex digits of the
# first (122 random bits) and 16 of the second; 55 characters in all (the cap is 63).
# In a schema of its own, to which nobody else has USAGE: a grant on every table of schema
# herald (or default privileges there) must not hand out the channel by accident.
BUS_KEY = ("CREATE SCHEMA herald_private",
           "REVOKE ALL ON SCHEMA herald_private FROM PUBLIC", """
CREATE TABLE herald_private.bus_key (
    id integer NOT NULL,
    channel text NOT NULL,
    CONSTRAINT pk_bus_key PRIMARY KEY (id),
    CONSTRAINT ck_bus_key_single_row CHECK (id = 1)
)""", "REVOKE ALL ON herald_private.bus_key FROM PUBLIC", """
INSERT INTO herald_private.bus_key (id, channel)
SELECT 1, 'herald_' || left(replace(gen_random_uuid()::text || gen_random_uuid()::text,
                                    '-', ''), 48)""")


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

# At most one candidate per transaction: its first row (the common transaction inserts
# one). Called from the WHEN of the constraint trigger below, which PostgreSQL evaluates
# as each row is inserted, so no other row of a bulk insert is even queued.
INLINE_CANDIDATE = r"""
CREATE FUNCTION herald.inline_candidate(id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('herald.inline_id', true), '') <> '' THEN
        RETURN false;
    END IF;
    PERFORM set_config('herald.inline_id', id::text, true);  -- until the transaction ends
    RETURN true;
END
$$;
"""

# Runs at COMMIT (deferred), so it renders the row as the transaction leaves it, and
# sends nothing for a row the transaction deleted again or gave an expiry.
NOTIFY_FRAME = rf"""
CREATE FUNCTION herald.notify_frame() RETURNS trigger
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

FRAME_TRIGGER = """
CREATE CONSTRAINT TRIGGER notify_frame AFTER INSERT ON herald.notifications
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
WHEN (NEW.expires_at IS NULL AND herald.inline_candidate(NEW.id))
EXECUTE FUNCTION herald.notify_frame()
"""


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    # EXECUTE on a trigger function is checked when a trigger is created, not when it
    # fires: revoked, no other role can attach this owner-run function to a table of its
    # own and have it send rows on the private channel.
    _run(LOCK_TIMEOUT, *BUS_KEY, INLINE_CANDIDATE, NOTIFY_FRAME,
         "REVOKE EXECUTE ON FUNCTION herald.notify_frame() FROM PUBLIC", FRAME_TRIGGER)


def downgrade() -> None:
    _run(LOCK_TIMEOUT, "DROP TRIGGER notify_frame ON herald.notifications",
         "DROP FUNCTION herald.notify_frame()", "DROP FUNCTION herald.inline_candidate(bigint)",
         "DROP TABLE herald_private.bus_key", "DROP SCHEMA herald_private")
