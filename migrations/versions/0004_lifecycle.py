"""lifecycle: category, expiry, archive; every read-state change is announced

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

What changes:

* five nullable columns without defaults, ``category`` (1-64 characters),
  ``expires_at``, ``archived_at``, ``read_xid`` and ``archive_xid``: adding them only
  touches the catalog, so a populated table is neither rewritten nor locked for longer
  than the catalog update.
* ``herald.stamp_change()`` (BEFORE UPDATE, per row, only when ``read_at`` or
  ``archived_at`` goes from NULL to a time or back) sets ``read_xid`` (read state) or
  ``archive_xid`` (archive state) to the updating transaction's id, which every
  announcement of that change carries as ``x``. Anyone may NOTIFY on the channel, so a
  node pushes a change only if the row's state matches it *and* the row's xid for that
  state says that transaction made it: a forged event for a row that never changed, or
  a stale one overtaken by a later change of the same state, pushes nothing, while a
  change of the *other* state (archived after being read) leaves it standing.
  The category check is added ``NOT VALID`` (new rows are checked at once) and
  validated afterwards outside the DDL transaction, under a lock that lets inserts run.
* two indexes for retention, built ``CONCURRENTLY`` (writers keep writing while they
  build): ``created_at`` (rows older than the retention period, oldest first) and
  ``expires_at`` where it is set (expired rows).
* ``herald.notify_changed()`` replaces ``notify_read()`` (AFTER UPDATE, per statement):
  it announces, per user, the ids whose ``read_at`` or ``archived_at`` went from NULL
  to a time or back, as ``{"k": "read"|"unread"|"archive"|"unarchive", "u", "ids",
  "x"}``, whoever ran the UPDATE. Herald's read-all says ``"all": true`` and ``"seq"``
  instead of ids: the highest seq it marked, so a node can check the claim against the
  table (every row up to it is read) and clients leave newer rows alone.

The DDL runs with a short ``lock_timeout``: behind a long transaction the ALTER would
otherwise queue for its lock while every insert queues behind it. A timeout fails the
migration instead; run it again. Each step is written to be re-runnable, because the
steps after the DDL transaction commit on their own.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"

COLUMNS = [
    "ALTER TABLE herald.notifications ADD COLUMN IF NOT EXISTS category text",
    "ALTER TABLE herald.notifications ADD COLUMN IF NOT EXISTS expires_at timestamptz",
    "ALTER TABLE herald.notifications ADD COLUMN IF NOT EXISTS archived_at timestamptz",
    "ALTER TABLE herald.notifications ADD COLUMN IF NOT EXISTS read_xid bigint",
    "ALTER TABLE herald.notifications ADD COLUMN IF NOT EXISTS archive_xid bigint",
    """
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = 'herald.notifications'::regclass
                         AND conname = 'ck_notifications_category_length') THEN
            ALTER TABLE herald.notifications ADD CONSTRAINT ck_notifications_category_length
                CHECK (char_length(category) BETWEEN 1 AND 64) NOT VALID;
        END IF;
    END $$
    """,
]

STAMP_CHANGE = r"""
CREATE OR REPLACE FUNCTION herald.stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.read_at IS NULL) <> (NEW.read_at IS NULL) THEN
        NEW.read_xid := pg_current_xact_id()::text::bigint;
    END IF;
    IF (OLD.archived_at IS NULL) <> (NEW.archived_at IS NULL) THEN
        NEW.archive_xid := pg_current_xact_id()::text::bigint;
    END IF;
    RETURN NEW;
END
$$;
"""

# Only real transitions: setting read_at again on a read row is not a change.
TRIGGER_STAMP = """
CREATE TRIGGER stamp_change BEFORE UPDATE ON herald.notifications
    FOR EACH ROW
    WHEN ((OLD.read_at IS NULL) <> (NEW.read_at IS NULL)
          OR (OLD.archived_at IS NULL) <> (NEW.archived_at IS NULL))
    EXECUTE FUNCTION herald.stamp_change()
"""

NOTIFY_CHANGED = r"""
CREATE OR REPLACE FUNCTION herald.notify_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
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
$$;
"""

TRIGGER_CHANGED = """
CREATE TRIGGER notify_changed AFTER UPDATE ON herald.notifications
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_changed()
"""

# Revision 0001's function and trigger, restored by downgrade(). Copied, not imported:
# a revision must not change when another one does.
NOTIFY_READ_V1 = r"""
CREATE OR REPLACE FUNCTION herald.notify_read() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rec record;
    i integer;
BEGIN
    FOR rec IN
        SELECT a.user_id, array_agg(a.id ORDER BY a.id) AS ids
        FROM after_rows a JOIN before_rows b ON a.id = b.id
        WHERE b.read_at IS NULL AND a.read_at IS NOT NULL
        GROUP BY a.user_id
    LOOP
        IF current_setting('herald.read_all', true) = rec.user_id THEN
            PERFORM pg_notify('herald',
                json_build_object('k', 'read', 'u', rec.user_id, 'all', true)::text);
        ELSE
            FOR i IN 1 .. cardinality(rec.ids) BY 300 LOOP
                PERFORM pg_notify('herald',
                    json_build_object('k', 'read', 'u', rec.user_id,
                                      'ids', rec.ids[i : i + 299])::text);
            END LOOP;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
"""

TRIGGER_READ_V1 = """
CREATE TRIGGER notify_read AFTER UPDATE ON herald.notifications
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_read()
"""

# Built and dropped outside a transaction so that inserts never wait for them.
INDEXES = [
    ("ix_notifications_created_at",
     "ON herald.notifications (created_at)"),
    ("ix_notifications_expires_at",
     "ON herald.notifications (expires_at) WHERE expires_at IS NOT NULL"),
]


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def _drop_invalid_index(name: str) -> None:
    """An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind, which
    IF NOT EXISTS would keep forever: drop it so the build starts over."""
    invalid = op.get_bind().exec_driver_sql(
        "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = 'herald' AND c.relname = '{name}' AND NOT i.indisvalid").first()
    if invalid:
        _run(f"DROP INDEX CONCURRENTLY herald.{name}")


def upgrade() -> None:
    _run(LOCK_TIMEOUT, *COLUMNS, STAMP_CHANGE, NOTIFY_CHANGED,
         "DROP TRIGGER IF EXISTS stamp_change ON herald.notifications", TRIGGER_STAMP,
         "DROP TRIGGER IF EXISTS notify_read ON herald.notifications",
         "DROP TRIGGER IF EXISTS notify_changed ON herald.notifications",
         TRIGGER_CHANGED,
         "DROP FUNCTION IF EXISTS herald.notify_read()")
    with op.get_context().autocommit_block():
        _run("ALTER TABLE herald.notifications VALIDATE CONSTRAINT "
             "ck_notifications_category_length")
        for name, definition in INDEXES:
            _drop_invalid_index(name)
            _run(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _ in INDEXES:
            _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{name}")
    _run(LOCK_TIMEOUT, NOTIFY_READ_V1,
         "DROP TRIGGER IF EXISTS notify_changed ON herald.notifications",
         TRIGGER_READ_V1,
         "DROP FUNCTION herald.notify_changed()",
         "DROP TRIGGER stamp_change ON herald.notifications",
         "DROP FUNCTION herald.stamp_change()",
         "ALTER TABLE herald.notifications DROP CONSTRAINT ck_notifications_category_length",
         "ALTER TABLE herald.notifications DROP COLUMN archive_xid",
         "ALTER TABLE herald.notifications DROP COLUMN read_xid",
         "ALTER TABLE herald.notifications DROP COLUMN archived_at",
         "ALTER TABLE herald.notifications DROP COLUMN expires_at",
         "ALTER TABLE herald.notifications DROP COLUMN category")
