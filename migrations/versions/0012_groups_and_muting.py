"""collapse keys (notifications.group_key) and muted categories (herald.muted_categories)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

Why (issue 21, points 3 and 4): a pull request's twenty comments were twenty items in
the inbox, read one by one; and a user could not say "no marketing" without the
backend filtering every publish.

What changes:

* ``herald.notifications.group_key``: an optional label of 1-200 characters (named
  check ``ck_notifications_group_key_length``, added NOT VALID and validated outside
  the table lock: every existing row is NULL). The frame (``herald.render_frame``, so
  the fetch and the inline frame alike) carries it right after ``category``. An index
  on ``(user_id, group_key, seq) WHERE group_key IS NOT NULL``, built concurrently,
  serves "read this group" and history by group.
* ``herald.muted_categories (user_id, category, muted_at)``: a row means the user muted
  that category. Same length checks as the notifications' columns, at most 100 rows per
  user (checked by the trigger below). herald_writer may SELECT, INSERT and DELETE it (a
  backend may set a user's preferences; herald_node inherits that), nobody may UPDATE.
* ``herald.muted_changed()``: two statement triggers (AFTER INSERT, AFTER DELETE, the
  changed rows as transition table ``changed_rows``) that, for each user whose rows
  changed, check the limit on an insert (under a per-user transaction advisory lock, so
  two concurrent inserts at READ COMMITTED cannot both pass it) and send
  ``{"k":"prefs","u":user}`` on the user's shard channel ``herald_<shard>``. It runs as
  its caller (no SECURITY DEFINER: the caller needs nothing it does not already have),
  path pinned, EXECUTE for nobody. The payload is a hint: a node reads the user's muted
  categories from the table and pushes them only when they differ from what its sockets
  were last sent.

Deploying: nodes of the previous code refuse the new inline frames (a field they do not
know) and fetch the rows instead, which carry the new field too; restart them after the
upgrade. Downgrade drops the table (the preferences are lost), the column and its index,
and restores revision 0011's ``render_frame``.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0012"
down_revision: Union[str, None] = "0011"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LOCK_TIMEOUT = "SET LOCAL lock_timeout = '5s'"
PIN = "SET LOCAL search_path = pg_catalog, pg_temp"
SYNC = """SELECT pg_notify('herald', '{"k":"sync"}')"""

GROUP_KEY_MAX = 200  # as app/models.py (copied, not imported: a revision must not change)
MUTED_MAX = 100
# The classid of the advisory lock muted_changed() takes per user (objid: hashtext(user)).
MUTED_LOCK = 0x6D75_7465  # "mute"

GROUP_INDEX = ("ix_notifications_user_id_group_key_seq",
               "ON herald.notifications (user_id, group_key, seq) WHERE group_key IS NOT NULL")


def _iso(column: str) -> str:
    # As revision 0010's (copied, not imported: a revision must not change later).
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 = 0 "
            f"THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            f"ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END")


def _render_frame(group_key: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION herald.render_frame(n herald.notifications) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT json_build_object(
        'type', 'notification', 'id', n.id, 'seq', n.seq, 'title', n.title,
        'body', n.body, 'data', n.data, 'link', n.link, 'category', n.category,{group_key}
        'created_at', {_iso("n.created_at")}, 'expires_at', {_iso("n.expires_at")},
        'read', n.read_at IS NOT NULL, 'archived', n.archived_at IS NOT NULL)::text;
END
"""


RENDER_FRAME = _render_frame("\n        'group_key', n.group_key,")
RENDER_FRAME_V11 = _render_frame("")  # revision 0010's, as 0011 left it

MUTED_CATEGORIES = """
CREATE TABLE herald.muted_categories (
    user_id text NOT NULL,
    category text NOT NULL,
    muted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_muted_categories PRIMARY KEY (user_id, category),
    CONSTRAINT ck_muted_categories_user_id_length
        CHECK (char_length(user_id) BETWEEN 1 AND 255),
    CONSTRAINT ck_muted_categories_category_length
        CHECK (char_length(category) BETWEEN 1 AND 64)
)
"""

# herald.shard_of()'s expression written out, as notify_changed() has it: this trigger
# runs as whoever mutes, who need not be allowed to execute Herald's functions.
SHARD_CHANNEL = ("'herald_' || ((('x' || substr(md5(convert_to(rec.user_id, 'UTF8')), 1, 8))"
                 "::bit(32)::bigint % 64))")

MUTED_CHANGED = rf"""
CREATE FUNCTION herald.muted_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rec record;
BEGIN
    FOR rec IN SELECT DISTINCT user_id FROM changed_rows ORDER BY user_id LOOP
        IF TG_OP = 'INSERT' THEN
            -- Concurrent inserts for one user wait here, and each counts (a statement of
            -- its own, so a fresh snapshot at READ COMMITTED) what the others committed.
            PERFORM pg_advisory_xact_lock({MUTED_LOCK}, hashtext(rec.user_id));
            IF (SELECT count(*) FROM herald.muted_categories AS m
                WHERE m.user_id = rec.user_id) > {MUTED_MAX} THEN
                RAISE EXCEPTION 'herald.muted_categories: a user mutes at most % categories',
                    {MUTED_MAX}
                    USING ERRCODE = 'check_violation', SCHEMA = 'herald',
                          TABLE = 'muted_categories', CONSTRAINT = 'muted_categories_limit';
            END IF;
        END IF;
        PERFORM pg_notify({SHARD_CHANNEL},
                          json_build_object('k', 'prefs', 'u', rec.user_id)::text);
    END LOOP;
    RETURN NULL;
END
$$
"""

TRIGGERS = (
    "CREATE TRIGGER muted_inserted AFTER INSERT ON herald.muted_categories "
    "REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION herald.muted_changed()",
    "CREATE TRIGGER muted_deleted AFTER DELETE ON herald.muted_categories "
    "REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION herald.muted_changed()",
)


def _run(*statements: str) -> None:
    bind = op.get_bind()
    for statement in statements:
        bind.exec_driver_sql(statement)


def upgrade() -> None:
    _run(LOCK_TIMEOUT, PIN,
         "ALTER TABLE herald.notifications ADD COLUMN group_key text, "
         "ADD CONSTRAINT ck_notifications_group_key_length "
         f"CHECK (char_length(group_key) BETWEEN 1 AND {GROUP_KEY_MAX}) NOT VALID",
         RENDER_FRAME,
         MUTED_CATEGORIES,
         "ALTER TABLE herald.muted_categories OWNER TO herald_owner",
         "REVOKE ALL ON herald.muted_categories FROM PUBLIC",
         "GRANT SELECT, INSERT, DELETE ON herald.muted_categories TO herald_writer",
         "GRANT SELECT, INSERT, DELETE ON herald.muted_categories TO herald_node",
         MUTED_CHANGED,
         "ALTER FUNCTION herald.muted_changed() OWNER TO herald_owner",
         "REVOKE ALL ON FUNCTION herald.muted_changed() FROM PUBLIC",
         *TRIGGERS,
         SYNC)
    with op.get_context().autocommit_block():
        _run("ALTER TABLE herald.notifications "
             "VALIDATE CONSTRAINT ck_notifications_group_key_length")
        name, definition = GROUP_INDEX
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{name}",  # left invalid by a failure
             f"CREATE INDEX CONCURRENTLY {name} {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _run(f"DROP INDEX CONCURRENTLY IF EXISTS herald.{GROUP_INDEX[0]}")
    _run(LOCK_TIMEOUT, PIN,
         "DROP TABLE herald.muted_categories",  # its triggers with it
         "DROP FUNCTION herald.muted_changed()",
         RENDER_FRAME_V11,
         "ALTER TABLE herald.notifications DROP COLUMN group_key",  # and its check
         SYNC)
