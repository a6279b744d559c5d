"""the relay: at high insert rates, NOTIFY leaves the writers' commits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Why: a transaction that NOTIFYs takes a database-wide lock at COMMIT and holds it through
its WAL flush, so notifying commits run one at a time (a few thousand per second however
many writers there are) while plain inserts group-commit several times faster.

What changes:

* ``herald.relay`` is a one-row table holding a *lease*: while ``batched_until`` is in
  the future, the elected relay (one node, chosen by an advisory lock) is announcing
  rows and the writers' triggers send no NOTIFY. The relay sets and renews the lease
  only while the insert rate is high; a relay that dies stops renewing, and within the
  lease the triggers notify directly again.
* ``assign_seq()`` (BEFORE INSERT, per row) now also decides how the row is announced:
  ``relay_xid`` NULL means "announced by this transaction's own NOTIFY at COMMIT"; a
  value (the inserting transaction's top-level xid, as bigint) means "left for the
  relay". Any value a client writes is overwritten.
* ``notify_inserted()`` (AFTER INSERT, per statement) notifies only for rows whose
  ``relay_xid`` is NULL.
* ``herald.relay_poll(since)`` is the relay's one statement per tick: it announces, with
  one NOTIFY per chunk of users, every relayed row whose transaction had not finished in
  snapshot ``since``, and returns the snapshot to pass next time. Rows are read through
  a partial index on ``relay_xid``, so in direct mode a tick is an empty index probe.
  The snapshot is taken *before* the rows are read, so a row is at worst announced
  twice (harmless: a pointer only says "fetch from your cursor"), never missed.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

RELAY_BATCHED = r"""
CREATE FUNCTION herald.relay_batched() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT batched_until > clock_timestamp() FROM herald.relay WHERE id = 1),
                    false)
$$;
"""

ASSIGN_SEQ_V3 = r"""
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
    -- NULL: this transaction's NOTIFY announces the row at COMMIT. Otherwise the relay
    -- does, after COMMIT, found by this transaction id.
    NEW.relay_xid := CASE WHEN herald.relay_batched()
                          THEN pg_current_xact_id()::text::bigint END;
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

# The statement-level announcement, shared by the trigger and the relay: one pointer
# {"k":"new","u":{user: highest seq}} per chunk of users, each well under NOTIFY's
# 8000-byte payload cap.
ANNOUNCE = r"""
CREATE FUNCTION herald.announce(users text[], seqs bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
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

RELAY_POLL = r"""
CREATE FUNCTION herald.relay_poll(since pg_snapshot, OUT next pg_snapshot,
                                  OUT announced integer, OUT last_id bigint)
LANGUAGE plpgsql
-- A parallel plan costs ~10 ms of worker start-up per tick to find a handful of rows.
SET max_parallel_workers_per_gather = 0
AS $$
DECLARE
    users text[];
    seqs bigint[];
BEGIN
    -- First the snapshot, then the read: whatever commits in between is announced now
    -- *and* next tick, never neither.
    next := pg_current_snapshot();
    -- The lower bound goes in as a literal: as a parameter the planner guesses a third
    -- of the index matches, where the recent end of it holds a few rows.
    EXECUTE format(
        'SELECT array_agg(user_id), array_agg(seq), count(*)
         FROM (SELECT user_id, max(seq) AS seq FROM herald.notifications
               WHERE relay_xid IS NOT NULL AND relay_xid >= %s
                 AND NOT pg_visible_in_snapshot(relay_xid::text::xid8, $1)
               GROUP BY user_id) AS latest',
        pg_snapshot_xmin(since)::text::bigint)
    INTO users, seqs, announced USING since;
    PERFORM herald.announce(users, seqs);
    -- The id sequence's position: the relay's measure of the insert rate.
    SELECT s.last_value INTO last_id FROM herald.notifications_id_seq AS s;
END
$$;
"""


# --- what downgrade() restores: revisions 0002 and 0001 as they were (copied, not
# imported: a revision is frozen once released, and so are the objects it made) -----

ASSIGN_SEQ_V2 = r"""
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

NOTIFY_INSERTED_V1 = r"""
CREATE OR REPLACE FUNCTION herald.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rec record;
    item text;
    chunk text := '';
BEGIN
    FOR rec IN SELECT user_id, max(seq) AS seq FROM inserted GROUP BY user_id LOOP
        item := to_json(rec.user_id)::text || ':' || rec.seq;
        IF chunk <> '' AND octet_length(chunk) + octet_length(item) > 7000 THEN
            PERFORM pg_notify('herald', '{"k":"new","u":{' || chunk || '}}');
            chunk := '';
        END IF;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    IF chunk <> '' THEN
        PERFORM pg_notify('herald', '{"k":"new","u":{' || chunk || '}}');
    END IF;
    RETURN NULL;
END
$$;
"""


def upgrade() -> None:
    op.add_column("notifications", sa.Column("relay_xid", sa.BigInteger(), nullable=True),
                  schema="herald")
    op.create_index(
        "ix_notifications_relay_xid", "notifications", ["relay_xid"], schema="herald",
        postgresql_where=sa.text("relay_xid IS NOT NULL"))
    op.create_table(
        "relay",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("batched_until", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("'-infinity'")),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_relay"),
        sa.CheckConstraint("id = 1", name=op.f("ck_relay_single_row")),
        schema="herald",
    )
    op.execute("INSERT INTO herald.relay (id) VALUES (1)")
    bind = op.get_bind()
    for statement in (RELAY_BATCHED, ASSIGN_SEQ_V3, ANNOUNCE, NOTIFY_INSERTED_V3, RELAY_POLL):
        bind.exec_driver_sql(statement)


def downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(ASSIGN_SEQ_V2)
    bind.exec_driver_sql(NOTIFY_INSERTED_V1)
    for fn in ("relay_poll(pg_snapshot)", "announce(text[], bigint[])", "relay_batched()"):
        op.execute(f"DROP FUNCTION herald.{fn}")
    op.drop_table("relay", schema="herald")
    op.drop_index("ix_notifications_relay_xid", "notifications", schema="herald")
    op.drop_column("notifications", "relay_xid", schema="herald")
