"""idempotency keys: a retried publish never creates a second notification

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``idempotency_key`` is optional and unique per user. ``herald.assign_seq()`` learns to
skip (RETURN NULL, no error) a row whose key the user already has, *before* taking a
seq, so a retry leaves neither a duplicate nor a gap. Keyed rows take the user's
counter row lock first, so two concurrent retries of the same key serialise and the
second sees the first once it commits. Rows without a key keep the one-statement path.
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

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

# Revision 0001's function, restored by downgrade().
ASSIGN_SEQ_V1 = r"""
CREATE OR REPLACE FUNCTION herald.assign_seq() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_id IS NULL OR char_length(NEW.user_id) NOT BETWEEN 1 AND 255 THEN
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
"""


def upgrade() -> None:
    op.add_column("notifications", sa.Column("idempotency_key", sa.Text(), nullable=True),
                  schema="herald")
    op.create_check_constraint(
        op.f("ck_notifications_idempotency_key_length"), "notifications",
        "char_length(idempotency_key) BETWEEN 1 AND 255", schema="herald")
    op.create_index(
        "uq_notifications_user_id_idempotency_key", "notifications",
        ["user_id", "idempotency_key"], unique=True, schema="herald",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.get_bind().exec_driver_sql(ASSIGN_SEQ_V2)


def downgrade() -> None:
    op.get_bind().exec_driver_sql(ASSIGN_SEQ_V1)
    op.drop_index("uq_notifications_user_id_idempotency_key", "notifications", schema="herald")
    op.drop_constraint(op.f("ck_notifications_idempotency_key_length"), "notifications",
                       schema="herald")
    op.drop_column("notifications", "idempotency_key", schema="herald")
