"""herald schema: notifications, per-user seq counters, push triggers

Revision ID: 0001
Revises:
Create Date: 2026-11-26

The data path starts here:

* ``herald.assign_seq()`` (BEFORE INSERT, per row) takes the next per-user seq from
  ``herald.user_counters`` with an upsert. The counter row stays locked until the
  inserting transaction ends, so a second writer for the same user waits: per user,
  seq order is commit order, and a rollback undoes the increment (no gap).
* ``herald.notify_inserted()`` (AFTER INSERT, per statement, transition table) sends
  one small pointer per statement, ``{"k":"new","u":{"alice":42}}`` (highest new seq
  per user), split into chunks well under NOTIFY's 8000-byte payload cap. NOTIFY is
  delivered at COMMIT and dropped on ROLLBACK, which is exactly the push contract.
* ``herald.notify_read()`` (AFTER UPDATE, per statement) announces rows whose
  ``read_at`` went from NULL to a time, whether the UPDATE came from Herald or from
  plain SQL. Herald's read-all sets ``herald.read_all`` to the user id for its
  transaction so the event says ``"all": true`` instead of listing every id.
* ``herald.guard_identity()`` refuses UPDATEs that would move a row to another user
  or seq, which would break every client's cursor.
"""

import re
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Bounds copied as literals on purpose: a revision must not change when app.models does.
LINK_PATTERN = r"^(https?://[^\s]+|/(?!/)[^\s]*)$"

FUNCTIONS = r"""
CREATE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
        -- Leave the row to the table's own NOT NULL / CHECK constraints, which name the
        -- offending column; never create a counter for an invalid user id.
        NEW.seq := 0;
        RETURN NEW;
    END IF;
    INSERT INTO herald.user_counters AS c (user_id, last_seq)
    VALUES (NEW.user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET last_seq = c.last_seq + 1
    RETURNING c.last_seq INTO NEW.seq;
    IF NEW.data IS NULL THEN
        NEW.data := '{}'::jsonb;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION herald.guard_identity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.user_id <> OLD.user_id OR NEW.seq <> OLD.seq THEN
        RAISE EXCEPTION 'herald.notifications: id, user_id and seq cannot be changed'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION herald.notify_inserted() RETURNS trigger
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

CREATE FUNCTION herald.notify_read() RETURNS trigger
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
            -- 300 ids of up to 19 digits stay far below the 8000-byte payload cap.
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

CREATE TRIGGER assign_seq BEFORE INSERT ON herald.notifications
    FOR EACH ROW EXECUTE FUNCTION herald.assign_seq();
CREATE TRIGGER guard_identity BEFORE UPDATE ON herald.notifications
    FOR EACH ROW EXECUTE FUNCTION herald.guard_identity();
CREATE TRIGGER notify_inserted AFTER INSERT ON herald.notifications
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_inserted();
CREATE TRIGGER notify_read AFTER UPDATE ON herald.notifications
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_read();
"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA herald")
    op.create_table(
        "user_counters",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_user_counters"),
        schema="herald",
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("link", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint("user_id", "seq", name="uq_notifications_user_id_seq"),
        sa.CheckConstraint(
            "char_length(user_id) BETWEEN 1 AND 255", name=op.f("ck_notifications_user_id_length")
        ),
        sa.CheckConstraint(
            "char_length(title) BETWEEN 1 AND 1000", name=op.f("ck_notifications_title_length")
        ),
        sa.CheckConstraint("char_length(body) <= 10000", name=op.f("ck_notifications_body_length")),
        sa.CheckConstraint(
            "jsonb_typeof(data) = 'object'", name=op.f("ck_notifications_data_is_object")
        ),
        sa.CheckConstraint(
            "octet_length(data::text) <= 16384", name=op.f("ck_notifications_data_size")
        ),
        sa.CheckConstraint(
            f"char_length(link) <= 2048 AND link ~* '{LINK_PATTERN}'",
            name=op.f("ck_notifications_link_url"),
        ),
        schema="herald",
    )
    op.create_index(
        "ix_notifications_unread", "notifications", ["user_id", "seq"], schema="herald",
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.create_index(
        "ix_notifications_undelivered", "notifications", ["user_id", "seq"], schema="herald",
        postgresql_where=sa.text("delivered_at IS NULL"),
    )
    # One statement per call: asyncpg prepares each statement and refuses multi-command strings.
    for statement in re.split(r"\n(?=CREATE )", FUNCTIONS.strip()):
        op.get_bind().exec_driver_sql(statement)


def downgrade() -> None:
    op.execute("DROP TABLE herald.notifications")
    op.execute("DROP TABLE herald.user_counters")
    for fn in ("assign_seq", "guard_identity", "notify_inserted", "notify_read"):
        op.execute(f"DROP FUNCTION herald.{fn}()")
    op.execute("DROP SCHEMA herald")
