"""safe links: no backslash (or whitespace) anywhere in a notification's link

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Browsers read a backslash in a URL as a slash, so ``/\\evil.example/phish`` passed the
old check as a same-site path and sent a click to ``http://evil.example/phish``. The
check now refuses a backslash anywhere. Existing rows with one lose their link (set to
NULL: it was an off-site redirect waiting for a click), then the new check is validated
outside the DDL transaction, under a lock that lets inserts run.
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Literals on purpose: a revision must not change when app.models does.
LINK_PATTERN = r"^(https?://[^\s\\]+|/(?![/\\])[^\s\\]*)$"
OLD_LINK_PATTERN = r"^(https?://[^\s]+|/(?!/)[^\s]*)$"


def _replace_check(pattern: str) -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
    bind.exec_driver_sql(
        "ALTER TABLE herald.notifications DROP CONSTRAINT IF EXISTS ck_notifications_link_url, "
        "ADD CONSTRAINT ck_notifications_link_url "
        f"CHECK (char_length(link) <= 2048 AND link ~* '{pattern}') NOT VALID")


def upgrade() -> None:
    _replace_check(LINK_PATTERN)
    op.get_bind().exec_driver_sql(
        "UPDATE herald.notifications SET link = NULL WHERE strpos(link, E'\\\\') > 0")
    with op.get_context().autocommit_block():
        op.get_bind().exec_driver_sql(
            "ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_link_url")


def downgrade() -> None:
    _replace_check(OLD_LINK_PATTERN)
    with op.get_context().autocommit_block():
        op.get_bind().exec_driver_sql(
            "ALTER TABLE herald.notifications VALIDATE CONSTRAINT ck_notifications_link_url")
