"""SQLAlchemy metadata for the ``herald`` schema: the source of truth alembic compares against.

The tables, constraints and indexes here are the schema at head (the migrations build
it step by step); trigger functions live only in the migrations (as explicit SQL),
because SQLAlchemy has no model for them.
The limits are module constants so that the HTTP/WebSocket validators enforce the very
same bounds as the database constraints.
"""

from __future__ import annotations

import re
from typing import TypeGuard

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

SCHEMA = "herald"
CHANNEL = "herald"
VERSION_TABLE = "herald_alembic_version"

USER_ID_MAX = 255
IDEMPOTENCY_KEY_MAX = 255
TITLE_MAX = 1000
BODY_MAX = 10_000
LINK_MAX = 2048
DATA_MAX_BYTES = 16_384
CATEGORY_MAX = 64
GROUP_KEY_MAX = 200
# Categories one user may mute (revision 0012; herald.muted_changed() enforces it).
MUTED_MAX = 100

# The one rule for user ids, wherever one comes from (a token's sub, a publish request,
# a bus payload): the table's user_id_length constraint, checked before the database.
USER_ID_RULE = f"a string of 1-{USER_ID_MAX} characters"


def is_user_id(value: object) -> TypeGuard[str]:
    """True for what ``notifications.user_id`` accepts (see ``USER_ID_RULE``)."""
    return isinstance(value, str) and 1 <= len(value) <= USER_ID_MAX

# Only absolute http(s) URLs or same-site paths: a javascript: link would be an XSS vector
# in every client that renders it, and '//host' or '/\\host' (browsers read a backslash as
# a slash) is an off-site link dressed as a path. Browsers also drop tabs and newlines
# from URLs and resolve dot segments ('/..//host' and '/%2e%2e//host' become '//host'), so
# a link holds no control or space character (invisible ones included), no backslash,
# and no '.' or '..' segment (revision 0009).
_LINK_REFUSED = (r"\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f"
                 r"\u3000\ufeff\\")
LINK_PATTERN = (r"^(?!.*(^|/)(\.|%2e){1,2}([/?#]|$))"
                rf"(https?://[^{_LINK_REFUSED}]+|/(?![/\\])[^{_LINK_REFUSED}]*)$")
LINK_RULE = ("an http(s) URL or a path starting with a single /, without spaces, control "
             f"characters, backslashes or dot segments (at most {LINK_MAX} chars)")


def is_link(value: object) -> TypeGuard[str]:
    """True for what ``notifications.link`` accepts (the ``link_url`` constraint)."""
    return (isinstance(value, str) and len(value) <= LINK_MAX
            and re.fullmatch(LINK_PATTERN, value, re.IGNORECASE) is not None)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(schema=SCHEMA, naming_convention=NAMING_CONVENTION)

notifications = Table(
    "notifications",
    metadata,
    # Taken by the assign_seq() trigger from notifications_id_seq (revision 0009): any id
    # an INSERT names is overwritten.
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", Text, nullable=False),
    # Assigned by the herald.assign_seq() trigger; any value a client supplies is overwritten.
    Column("seq", BigInteger, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=True),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("link", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("read_at", DateTime(timezone=True), nullable=True),
    # Optional, unique per user: a retried publish with the same key is skipped by the
    # assign_seq trigger before it takes a seq (revision 0002).
    Column("idempotency_key", Text, nullable=True),
    # Lifecycle (revision 0004): an optional label, a time after which the row is never
    # pushed, listed or counted, and the time the user archived it.
    Column("category", Text, nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("archived_at", DateTime(timezone=True), nullable=True),
    # The transaction that last moved read_at / archived_at between NULL and a time (set
    # by the stamp_change trigger); bus events of the change carry it, so a node can
    # tell a real change from a forged or stale announcement.
    Column("read_xid", BigInteger, nullable=True),
    Column("archive_xid", BigInteger, nullable=True),
    # A collapse key (revision 0012): an inbox shows one item per unread group, and
    # reading the group marks all of its rows read.
    Column("group_key", Text, nullable=True),
    UniqueConstraint("user_id", "seq"),
    CheckConstraint(f"char_length(user_id) BETWEEN 1 AND {USER_ID_MAX}", name="user_id_length"),
    CheckConstraint(f"char_length(title) BETWEEN 1 AND {TITLE_MAX}", name="title_length"),
    CheckConstraint(f"char_length(body) <= {BODY_MAX}", name="body_length"),
    CheckConstraint("jsonb_typeof(data) = 'object'", name="data_is_object"),
    CheckConstraint(f"octet_length(data::text) <= {DATA_MAX_BYTES}", name="data_size"),
    CheckConstraint(
        f"char_length(link) <= {LINK_MAX} AND link ~* '{LINK_PATTERN}'", name="link_url"
    ),
    CheckConstraint(
        f"char_length(idempotency_key) BETWEEN 1 AND {IDEMPOTENCY_KEY_MAX}",
        name="idempotency_key_length",
    ),
    CheckConstraint(f"char_length(category) BETWEEN 1 AND {CATEGORY_MAX}",
                    name="category_length"),
    CheckConstraint(f"char_length(group_key) BETWEEN 1 AND {GROUP_KEY_MAX}",
                    name="group_key_length"),
)

# Unread count and the unread-only history page.
Index(
    "ix_notifications_unread",
    notifications.c.user_id,
    notifications.c.seq,
    postgresql_where=text("read_at IS NULL"),
)
Index(
    "uq_notifications_user_id_idempotency_key",
    notifications.c.user_id,
    notifications.c.idempotency_key,
    unique=True,
    postgresql_where=text("idempotency_key IS NOT NULL"),
)
# "Everything not yet delivered" for a client that connects without a cursor.
Index(
    "ix_notifications_undelivered",
    notifications.c.user_id,
    notifications.c.seq,
    postgresql_where=text("delivered_at IS NULL"),
)

# History by category (revision 0009): without it a filter read every row of the user.
Index(
    "ix_notifications_user_id_category_seq",
    notifications.c.user_id,
    notifications.c.category,
    notifications.c.seq,
    postgresql_where=text("category IS NOT NULL"),
)

# A group's rows (revision 0012): "read this group" and history by group.
Index(
    "ix_notifications_user_id_group_key_seq",
    notifications.c.user_id,
    notifications.c.group_key,
    notifications.c.seq,
    postgresql_where=text("group_key IS NOT NULL"),
)

# Retention: the oldest rows first, and the rows that have an expiry.
Index("ix_notifications_created_at", notifications.c.created_at)
Index(
    "ix_notifications_expires_at",
    notifications.c.expires_at,
    postgresql_where=text("expires_at IS NOT NULL"),
)

# One row per user; its row lock serialises that user's inserts so seq order is commit order,
# and because the increment is part of the inserting transaction a rollback leaves no gap.
user_counters = Table(
    "user_counters",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
)

# One row: while batched_until is in the future the elected relay announces new rows and
# the insert trigger sends no NOTIFY (see app/relay.py).
relay = Table(
    "relay",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("batched_until", DateTime(timezone=True), nullable=False,
           server_default=text("'-infinity'")),
    Column("holder", Text, nullable=True),
    CheckConstraint("id = 1", name="single_row"),
)

# Every node's heartbeat (revision 0007): its share of the sockets, for the others to see
# (app/membership.py) and for `herald status`.
nodes = Table(
    "nodes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("sockets", Integer, nullable=False, server_default=text("0")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False,
           server_default=text("now()")),
    Column("relay_leader", Boolean, nullable=False, server_default=text("false")),
    Column("draining", Boolean, nullable=False, server_default=text("false")),
    # The shards whose channels it listens to (revision 0011; ``herald status``).
    Column("shards", ARRAY(Integer), nullable=False, server_default=text("'{}'")),
)

# A row: the user muted the category (revision 0012). Muted rows are not counted as
# unread; clients learn the list (welcome, preferences frames) and decide about toasts.
# Inserts and deletes are announced on the user's shard channel by the muted_changed()
# triggers, which also keep a user at MUTED_MAX rows.
muted_categories = Table(
    "muted_categories",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("category", Text, primary_key=True),
    Column("muted_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    CheckConstraint(f"char_length(user_id) BETWEEN 1 AND {USER_ID_MAX}", name="user_id_length"),
    CheckConstraint(f"char_length(category) BETWEEN 1 AND {CATEGORY_MAX}",
                    name="category_length"),
)

# herald_private.bus_key (revision 0008), the private bus channel's name, lives outside
# schema herald (so that grants on all of herald's tables never include it) and outside
# this metadata: alembic compares schema herald only.

# Rows left to the relay (revision 0005): one (user, highest seq) pointer per user per
# INSERT statement made under the lease, deleted by the relay as it announces them.
# UNLOGGED: pointers are hints; after a crash or failover every node re-reads anyway.
relay_pending = Table(
    "relay_pending",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    prefixes=["UNLOGGED"],
)
