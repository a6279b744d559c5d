"""relay queue: rows left to the relay are pointed at from a small table, not stamped

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

Why: revision 0003 stamped every row inserted under the relay's lease with its
transaction id and found them through a partial index on ``relay_xid``. Nothing ever
cleared the stamp, so that index grew by one entry per batched row, forever; clearing
it would have been a second (non-HOT) write of every such row.

What changes:

* ``herald.relay_pending`` (UNLOGGED: no WAL, not replicated) holds one pointer
  ``(user_id, highest seq)`` per user per INSERT statement made under the lease. The
  decision "notify now or leave it to the relay" moves from ``assign_seq()`` (once per
  row) to ``notify_inserted()`` (once per statement).
* ``herald.relay_poll()`` deletes every pointer it can see and announces them, in one
  transaction: a pointer becomes visible when its inserting transaction commits,
  disappears with a rollback, and is announced exactly when its DELETE commits, so the
  snapshot bookkeeping of 0003 is gone. The table only ever holds what is not yet
  announced (a few rows).
* ``relay_xid`` and its index are dropped (catalog-only, no rewrite).

Pointers are hints, never the data: if PostgreSQL crashes (an unlogged table is
emptied) or fails over (a standby has no unlogged data), every node has lost its
LISTEN connection too, and re-reads the table for its clients when it listens again.
The upgrade ends with a ``sync`` so nodes re-read rows the old relay had not announced.
During a rolling deploy nodes still on the old code call ``relay_poll(since)``: it stays,
as a wrapper around the new poll. ``notify_inserted()`` runs as its owner (SECURITY
DEFINER), so writers need no grant on the pointer table.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"

# vacuum_truncate = false: a VACUUM that shrinks the file needs an exclusive lock, and
# with writers' transactions holding pointers open it kept retrying for seconds, during
# which the relay (that ran it) announced nothing.
PENDING_TABLE = """
CREATE UNLOGGED TABLE IF NOT EXISTS herald.relay_pending (
    user_id text NOT NULL,
    seq bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        vacuum_truncate = false)
"""

# 0002's function again: the seq alone, no stamp (copied, not imported).
ASSIGN_SEQ = r"""
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

NOTIFY_INSERTED = r"""
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

RELAY_POLL = r"""
CREATE OR REPLACE FUNCTION herald.relay_poll(OUT announced integer, OUT last_id bigint)
LANGUAGE plpgsql AS $$
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
$$;
"""

# What nodes on the previous code call; the new poll, under the old signature.
RELAY_POLL_COMPAT = r"""
CREATE OR REPLACE FUNCTION herald.relay_poll(since pg_snapshot, OUT next pg_snapshot,
                                             OUT announced integer, OUT last_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    next := pg_current_snapshot();
    SELECT p.announced, p.last_id INTO announced, last_id FROM herald.relay_poll() AS p;
END
$$;
"""

SYNC = """SELECT pg_notify('herald', '{"k":"sync"}')"""
END_LEASE = "UPDATE herald.relay SET batched_until = '-infinity' WHERE id = 1"

# --- revision 0003's objects, restored by downgrade() (copied, not imported) ---------------

ASSIGN_SEQ_V3 = r"""
CREATE OR REPLACE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current_seq bigint;
BEGIN
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
        NEW.seq := 0;
        RETURN NEW;
    END IF;
    IF NEW.data IS NULL THEN
        NEW.data := '{}'::jsonb;
    END IF;
    NEW.relay_xid := CASE WHEN herald.relay_batched()
                          THEN pg_current_xact_id()::text::bigint END;
    IF NEW.idempotency_key IS NULL THEN
        INSERT INTO herald.user_counters AS c (user_id, last_seq)
        VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq INTO NEW.seq;
        RETURN NEW;
    END IF;
    INSERT INTO herald.user_counters (user_id, last_seq) VALUES (NEW.user_id, 0)
    ON CONFLICT (user_id) DO NOTHING;
    SELECT last_seq INTO current_seq FROM herald.user_counters
    WHERE user_id = NEW.user_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM herald.notifications
               WHERE user_id = NEW.user_id AND idempotency_key = NEW.idempotency_key) THEN
        RETURN NULL;
    END IF;
    UPDATE herald.user_counters SET last_seq = current_seq + 1 WHERE user_id = NEW.user_id;
    NEW.seq := current_seq + 1;
    RETURN NEW;
END
$$;
"""

NOTIFY_INSERTED_V3 = r"""
CREATE OR REPLACE FUNCTION herald.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    SELECT array_agg(user_id), array_agg(seq) INTO users, seqs
    FROM (SELECT user_id, max(seq) AS seq FROM inserted
          WHERE relay_xid IS NULL GROUP BY user_id) AS latest;
    PERFORM herald.announce(users, seqs);
    RETURN NULL;
END
$$;
"""

RELAY_POLL_V3 = r"""
CREATE FUNCTION herald.relay_poll(since pg_snapshot, OUT next pg_snapshot,
                                  OUT announced integer, OUT last_id bigint)
LANGUAGE plpgsql
SET max_parallel_workers_per_gather = 0
AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    next := pg_current_snapshot();
    EXECUTE format(
        'SELECT array_agg(user_id), array_agg(seq), count(*)
         FROM (SELECT user_id, max(seq) AS seq FROM herald.notifications
               WHERE relay_xid IS NOT NULL AND relay_xid >= %s
                 AND NOT pg_visible_in_snapshot(relay_xid::text::xid8, $1)
               GROUP BY user_id) AS latest',
        pg_snapshot_xmin(since)::text::bigint)
    INTO users, seqs, announced USING since;
    PERFORM herald.announce(users, seqs);
    SELECT s.last_value INTO last_id FROM herald.notifications_id_seq AS s;
END
$$;
"""


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    _run(LOCK_TIMEOUT, PENDING_TABLE, ASSIGN_SEQ, NOTIFY_INSERTED,
         "DROP FUNCTION IF EXISTS herald.relay_poll(pg_snapshot)", RELAY_POLL,
         RELAY_POLL_COMPAT,
         "DROP INDEX IF EXISTS herald.ix_notifications_relay_xid",
         "ALTER TABLE herald.notifications DROP COLUMN IF EXISTS relay_xid",
         SYNC)


def downgrade() -> None:
    # Writers notify directly again first (no new pointers), and a sync goes out last:
    # nothing left in this table is lost, whoever announces it.
    with op.get_context().autocommit_block():
        _run(END_LEASE)
    _run(LOCK_TIMEOUT, "SELECT herald.relay_poll()",
         "ALTER TABLE herald.notifications ADD COLUMN relay_xid bigint",
         ASSIGN_SEQ_V3, NOTIFY_INSERTED_V3,
         "DROP FUNCTION herald.relay_poll(pg_snapshot)", "DROP FUNCTION herald.relay_poll()",
         RELAY_POLL_V3, "DROP TABLE herald.relay_pending", SYNC)
    with op.get_context().autocommit_block():
        # Every row has relay_xid NULL: the index is empty, built without blocking writers.
        _run("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_notifications_relay_xid "
             "ON herald.notifications (relay_xid) WHERE relay_xid IS NOT NULL")
