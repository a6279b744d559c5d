"""All SQL about notifications. Knows nothing about sockets or LISTEN.

Reads and idempotent updates are retried on a lost pool connection (a backend killed by
``pg_terminate_backend``, a restarted server): asyncpg discards the dead connection and
the retry gets a fresh one. Inserts are not retried here: when a connection dies at
COMMIT the outcome is unknown, and only the caller can decide what a retry means.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar

import asyncpg

from app.backoff import Backoff
from app.errors import CONNECTION_ERRORS

log = logging.getLogger(__name__)

T = TypeVar("T")




def _iso(column: str) -> str:
    """SQL for ``column`` (timestamptz) as ``protocol.iso`` writes it: UTC, a ``Z``, the
    microseconds only when there are any (as Python's ``isoformat``)."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"CASE WHEN extract(microseconds FROM {column})::bigint % 1000000 = 0 "
            f"THEN to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
            f"ELSE to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END")


# The notification frame, rendered by PostgreSQL (sql/render_frame.sql, revision 0010):
# the node only hands text to the sockets, without decoding the row's JSON and encoding
# it again. The inline frame of the insert trigger is the same function's output.
FRAME = "herald.render_frame(n)"

# A history item (docs/openapi.yaml): the frame's fields but "type", and the three
# lifecycle times. Rendered by PostgreSQL like the frame: a row's data is never decoded
# by the node (a row nesting arrays 5,000 deep once made every history page of its user
# fail in the JSON codec).
HISTORY_ITEM = f"""json_build_object(
    'id', n.id, 'seq', n.seq, 'title', n.title, 'body', n.body, 'data', n.data,
    'link', n.link, 'category', n.category, 'group_key', n.group_key,
    'created_at', {_iso("n.created_at")},
    'expires_at', {_iso("n.expires_at")}, 'read', n.read_at IS NOT NULL,
    'archived', n.archived_at IS NOT NULL, 'delivered_at', {_iso("n.delivered_at")},
    'read_at', {_iso("n.read_at")}, 'archived_at', {_iso("n.archived_at")})::text"""

# A row past its expires_at is never pushed, replayed, listed or counted.
LIVE = "(expires_at IS NULL OR expires_at > now())"
# What the unread count counts (docs/protocol.md).
UNREAD = f"read_at IS NULL AND archived_at IS NULL AND {LIVE}"
# Counting stops here: a user with 100,000 unread rows would cost every welcome, push and
# history page a walk over all of them; a badge shows "10000+" long before.
UNREAD_MAX = 10_000


def muted(user: str) -> str:
    """SQL for the categories ``user`` (an SQL expression) muted, as an array in code
    point order (Python's ``sorted``; revision 0012)."""
    return (f"ARRAY(SELECT m.category FROM herald.muted_categories m "
            f"WHERE m.user_id = {user} ORDER BY m.category COLLATE \"C\")")


def unread_count(user: str) -> str:
    """SQL for the unread count of ``user`` (an SQL expression), at most ``UNREAD_MAX``:
    rows of a category the user muted are not counted (the muted list is an InitPlan,
    read once per user; the walk stays on ix_notifications_unread)."""
    return (f"(SELECT count(*) FROM (SELECT 1 FROM herald.notifications "
            f"WHERE user_id = {user} AND {UNREAD} AND (category IS NULL OR "
            f"category <> ALL (ARRAY(SELECT m.category FROM herald.muted_categories m "
            f"WHERE m.user_id = {user}))) LIMIT {UNREAD_MAX}) AS unread_rows)")


class TooManyMuted(Exception):
    """The user already mutes ``models.MUTED_MAX`` categories (the trigger refused)."""

# Lifecycle changes a user can make: kind -> (assignment, rows it changes). The
# notify_changed trigger (revision 0004) announces each one to every node.
CHANGES: dict[str, tuple[str, str]] = {
    "read": ("read_at = now()", "read_at IS NULL"),
    "unread": ("read_at = NULL", "read_at IS NOT NULL"),
    "archive": ("archived_at = now()", "archived_at IS NULL"),
    "unarchive": ("archived_at = NULL", "archived_at IS NOT NULL"),
}

@dataclass(frozen=True)
class NewNotification:
    user_id: str
    title: str
    body: str | None = None
    data: Mapping[str, Any] | None = None
    link: str | None = None
    idempotency_key: str | None = None
    category: str | None = None
    expires_at: datetime | None = None
    group_key: str | None = None


@dataclass(frozen=True)
class Inserted:
    id: int
    seq: int
    user_id: str
    created_at: datetime
    duplicate: bool = False  # the idempotency key was already used: this is the original


@dataclass(frozen=True)
class HistoryPage:
    items: list[str]  # newest first, each a history item's JSON text (HISTORY_ITEM)
    unread: int
    last_seq: int  # the user's newest seq, read in the same snapshot as ``rows``
    muted: tuple[str, ...] = ()  # the categories the user muted, sorted


@dataclass(frozen=True)
class RowState:
    user_id: str
    read: bool
    archived: bool
    read_xid: int | None  # the transaction that last moved read_at between NULL and a time
    archive_xid: int | None  # ... archived_at
    live: bool  # not expired: an expired row is never pushed, nor any change of it


@dataclass(frozen=True)
class Changed:
    """A row whose read or archive state some transaction from a given xid on changed."""

    id: int
    user_id: str
    read: bool
    archived: bool
    read_changed: bool
    archive_changed: bool


@dataclass(frozen=True)
class ReadAll:
    """A read-all claim checked against the table (``Store.read_alls``)."""

    holds: bool  # it made rows read, and every row up to its seq is read now
    ids: list[int]  # the rows it marked read that still are


@dataclass(frozen=True)
class SessionStart:
    """What a connecting client needs: the user's newest seq, where its replay starts
    (deliver every seq above ``baseline``), and the unread count."""

    last_seq: int
    baseline: int
    unread: int
    muted: tuple[str, ...] = ()  # the categories the user muted, sorted


@dataclass(frozen=True)
class Preferences:
    """A user's muted categories (sorted) and the unread count that leaves."""

    muted: tuple[str, ...]
    unread: int


class PoolStore:
    """Statements on a pool, each on a connection of its own, retried (``_retrying``) on a
    lost connection. ``behind_pooler``: the pool goes through a transaction pooler (PgBouncer in
    transaction mode): every operation then runs inside a transaction, the only unit
    such a pooler keeps on one server (``db.behind_transaction_pooler``)."""

    def __init__(self, pool: asyncpg.Pool, retries: int = 4,
                 behind_pooler: bool = False) -> None:
        self._pool = pool
        self._retries = retries
        self._behind_pooler = behind_pooler

    async def _retrying(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        backoff = Backoff(0.05, 1.0)
        for attempt in range(self._retries + 1):
            try:
                async with self._pool.acquire() as conn:
                    if not self._behind_pooler:
                        return await op(conn)
                    async with conn.transaction():
                        return await op(conn)
            except CONNECTION_ERRORS as err:
                if attempt == self._retries:
                    raise
                log.warning("database connection lost (%s); retrying", type(err).__name__)
                await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raise if the database does not answer ``SELECT 1`` within 2 s."""
        async with self._pool.acquire(timeout=2) as conn:
            await conn.execute("SELECT 1", timeout=2)  # the simple protocol: any pooler

class Store(PoolStore):
    """All SQL about notifications: publishing, session starts, fetches, history, read
    state. (Heartbeats are in app/heartbeats.py, retention's deletes in app/retention.py.)"""

    async def insert(self, items: Sequence[NewNotification]) -> list[Inserted]:
        """Insert ``items`` in one statement and one transaction, in list order.

        The ORDER BY on the ordinality makes rows reach the seq trigger in list order, and
        RETURNING follows that order. An item whose ``idempotency_key`` the user already
        has is skipped by the trigger; the original row is returned for it instead, marked
        ``duplicate``. Constraint violations raise asyncpg's
        ``IntegrityConstraintViolationError`` subclasses and insert nothing.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                INSERT INTO herald.notifications (user_id, title, body, data, link,
                                                  idempotency_key, category, expires_at,
                                                  group_key)
                SELECT u, t, b, coalesce(d, '{}'::jsonb), l, k, c, e, g
                FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
                            $6::text[], $7::text[], $8::timestamptz[], $9::text[])
                     WITH ORDINALITY AS x(u, t, b, d, l, k, c, e, g, n)
                ORDER BY n
                RETURNING id, seq, user_id, created_at, idempotency_key
                """,
                [i.user_id for i in items],
                [i.title for i in items],
                [i.body for i in items],
                [None if i.data is None else dict(i.data) for i in items],
                [i.link for i in items],
                [i.idempotency_key for i in items],
                [i.category for i in items],
                [i.expires_at for i in items],
                [i.group_key for i in items],
            )
            if all(i.idempotency_key is None for i in items):
                return [Inserted(r["id"], r["seq"], r["user_id"], r["created_at"])
                        for r in rows]
            return await self._match_keyed(conn, items, rows)

    async def _match_keyed(
        self, conn: asyncpg.Connection, items: Sequence[NewNotification],
        rows: Sequence[asyncpg.Record],
    ) -> list[Inserted]:
        """Pair each item with its new row, or with the original row of its key."""
        created = {(r["user_id"], r["idempotency_key"]): r for r in rows
                   if r["idempotency_key"] is not None}
        plain = iter([r for r in rows if r["idempotency_key"] is None])
        wanted = [(i.user_id, i.idempotency_key) for i in items
                  if i.idempotency_key is not None
                  and (i.user_id, i.idempotency_key) not in created]
        originals = {}
        if wanted:
            found = await conn.fetch(
                """
                SELECT n.id, n.seq, n.user_id, n.created_at, n.idempotency_key
                FROM unnest($1::text[], $2::text[]) AS w(u, k)
                JOIN herald.notifications n ON n.user_id = w.u AND n.idempotency_key = w.k
                """,
                [u for u, _ in wanted], [k for _, k in wanted])
            originals = {(r["user_id"], r["idempotency_key"]): r for r in found}
        result: list[Inserted] = []
        handed_out: set[tuple[str, str]] = set()
        for item in items:
            if item.idempotency_key is None:
                r = next(plain)
                result.append(Inserted(r["id"], r["seq"], r["user_id"], r["created_at"]))
                continue
            key = (item.user_id, item.idempotency_key)
            r = created.get(key)
            duplicate = r is None or key in handed_out
            r = r if r is not None else originals[key]
            handed_out.add(key)
            result.append(Inserted(r["id"], r["seq"], r["user_id"], r["created_at"],
                                   duplicate=duplicate))
        return result

    async def session_starts(
        self, requests: Sequence[tuple[str, int | None]]
    ) -> list[SessionStart]:
        """Where each (re)connecting client ``(user, last_seq)`` resumes, in one query.

        With a cursor, replay starts after it (clamped to the user's newest seq: a cursor
        from the future means the client saw another database). Without one, replay
        starts at the oldest undelivered row, so a new device gets everything no client
        has acknowledged yet.
        """
        users = sorted({user for user, _ in requests})

        async def op(conn: asyncpg.Connection) -> list[SessionStart]:
            rows = await conn.fetch(
                f"""
                SELECT u,
                       coalesce((SELECT last_seq FROM herald.user_counters
                                 WHERE user_id = u), 0) AS last_seq,
                       (SELECT min(seq) FROM herald.notifications
                        WHERE user_id = u AND delivered_at IS NULL) AS first_undelivered,
                       {unread_count("u")} AS unread,
                       {muted("u")} AS muted
                FROM unnest($1::text[]) AS u
                """,
                users,
            )
            by_user = {r["u"]: r for r in rows}
            starts = []
            for user, last_seq in requests:
                row = by_user[user]
                newest = int(row["last_seq"])
                if last_seq is not None:
                    baseline = min(last_seq, newest)
                elif row["first_undelivered"] is not None:
                    baseline = int(row["first_undelivered"]) - 1
                else:
                    baseline = newest
                starts.append(SessionStart(newest, baseline, int(row["unread"]),
                                           tuple(row["muted"])))
            return starts

        return await self._retrying(op)

    async def fetch_after(
        self, cursors: Mapping[str, int], limit: int = 500
    ) -> list[asyncpg.Record]:
        """Rows with ``seq > cursors[user]`` that have not expired, at most ``limit`` per
        user, ordered by (user, seq), as ``(user_id, seq, created_at, frame)``: the
        notification frame is ready-made text.

        Per-user seq order is commit order, so no row below a returned seq can still
        appear: a user's rows here are *every* row that will ever exist between the
        cursor and the last one returned. A seq missing among them was deleted or has
        expired, for good (app/hub.py relies on this; an expiry moved later after it
        passed does not bring the row back to a client that went past it)."""
        if not cursors:
            return []
        users = list(cursors)

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""
                    SELECT r.* FROM unnest($1::text[], $2::bigint[]) AS c(user_id, after)
                    CROSS JOIN LATERAL (
                        SELECT n.user_id, n.seq, n.created_at, {FRAME} AS frame
                        FROM herald.notifications n
                        WHERE n.user_id = c.user_id AND n.seq > c.after AND {LIVE}
                        ORDER BY n.seq LIMIT $3
                    ) r
                    ORDER BY r.user_id, r.seq
                    """,
                    users,
                    [cursors[u] for u in users],
                    limit,
                )
            )

        return await self._retrying(op)

    async def history(
        self, user: str, limit: int, before_seq: int | None, unread_only: bool,
        archived: bool = False, category: str | None = None, group_key: str | None = None,
    ) -> HistoryPage:
        """A page of ``user``'s live (unexpired) notifications, newest first: archived
        ones only with ``archived``, otherwise only those not archived; optionally only
        unread ones, or one ``category``, or one ``group_key``. With the unread count
        (muted categories left out), the muted categories and the user's newest seq, all
        read in one snapshot, so a client that opens its socket with that seq
        as its cursor gets exactly what came after the page."""

        async def read(conn: asyncpg.Connection) -> HistoryPage:
            rows = await conn.fetch(
                f"""
                SELECT {HISTORY_ITEM} AS item FROM herald.notifications n
                WHERE user_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                  AND (NOT $3 OR read_at IS NULL)
                  AND (archived_at IS NOT NULL) = $4
                  AND ($5::text IS NULL OR category = $5)
                  AND ($7::text IS NULL OR group_key = $7)
                  AND {LIVE}
                ORDER BY seq DESC LIMIT $6
                """,
                user, before_seq, unread_only, archived, category, limit, group_key,
            )
            totals = await conn.fetchrow(
                f"""
                SELECT {unread_count("$1")} AS unread, {muted("$1")} AS muted,
                       coalesce((SELECT last_seq FROM herald.user_counters
                                 WHERE user_id = $1), 0) AS last_seq
                """,
                user,
            )
            return HistoryPage([r["item"] for r in rows], int(totals["unread"]),
                               int(totals["last_seq"]), tuple(totals["muted"]))

        async def op(conn: asyncpg.Connection) -> HistoryPage:
            if conn.is_in_transaction():  # the store's own (behind a transaction pooler)
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await read(conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await read(conn)

        return await self._retrying(op)

    async def unread_counts(self, users: Iterable[str]) -> dict[str, int]:
        users = list(users)

        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(
                f"""
                SELECT u, {unread_count("u")} AS unread
                FROM unnest($1::text[]) AS u
                """,
                users,
            )
            return {r["u"]: int(r["unread"]) for r in rows}

        return await self._retrying(op)

    async def muted_lists(self, users: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Each user's muted categories, sorted (users without any are absent)."""
        users = list(users)
        if not users:
            return {}

        async def op(conn: asyncpg.Connection) -> dict[str, tuple[str, ...]]:
            rows = await conn.fetch(
                """
                SELECT user_id, array_agg(category ORDER BY category COLLATE "C") AS muted
                FROM herald.muted_categories WHERE user_id = ANY($1::text[])
                GROUP BY user_id
                """,
                users,
            )
            return {r["user_id"]: tuple(r["muted"]) for r in rows}

        return await self._retrying(op)

    async def preferences(self, user: str) -> Preferences:
        """``user``'s muted categories and unread count, in one statement."""

        async def op(conn: asyncpg.Connection) -> Preferences:
            row = await conn.fetchrow(
                f"SELECT {muted('$1::text')} AS muted, {unread_count('$1::text')} AS unread",
                user)
            return Preferences(tuple(row["muted"]), int(row["unread"]))

        return await self._retrying(op)

    async def mute(self, user: str, category: str) -> int:
        """Mute ``category`` for ``user``: 1 if it was not muted, else 0. The trigger
        announces it; raises ``TooManyMuted`` past ``models.MUTED_MAX``."""

        async def op(conn: asyncpg.Connection) -> int:
            try:
                status = await conn.execute(
                    "INSERT INTO herald.muted_categories (user_id, category) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING", user, category)
            except asyncpg.CheckViolationError as err:
                if getattr(err, "constraint_name", None) == "muted_categories_limit":
                    raise TooManyMuted() from None
                raise
            return int(status.split()[-1])

        return await self._retrying(op)

    async def unmute(self, user: str, category: str) -> int:
        """Unmute ``category`` for ``user``: 1 if it was muted, else 0."""

        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                "DELETE FROM herald.muted_categories WHERE user_id = $1 AND category = $2",
                user, category)
            return int(status.split()[-1])

        return await self._retrying(op)

    async def states(self, ids: Iterable[int]) -> dict[int, RowState]:
        """The current lifecycle state of each existing row among ``ids``: bus payloads
        are untrusted (anyone may NOTIFY on the channel), so a change is pushed only if
        the table says it is so."""
        wanted = list(set(ids))
        if not wanted:
            return {}

        async def op(conn: asyncpg.Connection) -> dict[int, RowState]:
            rows = await conn.fetch(
                "SELECT id, user_id, read_at IS NOT NULL AS read, "
                f"archived_at IS NOT NULL AS archived, read_xid, archive_xid, {LIVE} AS live "
                "FROM herald.notifications WHERE id = ANY($1::bigint[])", wanted)
            return {r["id"]: RowState(r["user_id"], r["read"], r["archived"], r["read_xid"],
                                      r["archive_xid"], r["live"])
                    for r in rows}

        return await self._retrying(op)

    async def changed_since(self, users: Sequence[str], xid: int) -> list[Changed]:
        """The live rows of ``users`` whose read or archive state a transaction with id
        ``xid`` or later changed (``read_xid`` / ``archive_xid``, revision 0004)."""
        if not users:
            return []

        async def op(conn: asyncpg.Connection) -> list[Changed]:
            rows = await conn.fetch(
                f"""
                SELECT id, user_id, read_at IS NOT NULL AS read,
                       archived_at IS NOT NULL AS archived,
                       coalesce(read_xid >= $2, false) AS read_changed,
                       coalesce(archive_xid >= $2, false) AS archive_changed
                FROM herald.notifications
                WHERE user_id = ANY($1::text[]) AND (read_xid >= $2 OR archive_xid >= $2)
                  AND {LIVE}
                ORDER BY user_id, id
                """,
                list(users), xid)
            return [Changed(r["id"], r["user_id"], r["read"], r["archived"], r["read_changed"],
                            r["archive_changed"]) for r in rows]

        return await self._retrying(op)

    async def read_alls(self, claims: Sequence[tuple[str, int, int]]) -> list[ReadAll]:
        """What the table says of each read-all claim ``(user, up to seq, xid)``: whether
        every row of the user up to that seq is read, and the ids transaction ``xid``
        marked read that still are (what to push when the whole claim no longer holds:
        a row was marked unread again since)."""
        if not claims:
            return []

        async def op(conn: asyncpg.Connection) -> list[ReadAll]:
            rows = await conn.fetch(
                """
                SELECT c.i,
                       NOT EXISTS (SELECT 1 FROM herald.notifications n
                                   WHERE n.user_id = c.u AND n.seq <= c.s
                                     AND n.read_at IS NULL) AS holds,
                       ARRAY(SELECT n.id FROM herald.notifications n
                             WHERE n.user_id = c.u AND n.read_xid = c.x
                               AND n.read_at IS NOT NULL ORDER BY n.id) AS ids
                FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                     WITH ORDINALITY AS c(u, s, x, i)
                ORDER BY c.i
                """,
                [c[0] for c in claims], [c[1] for c in claims], [c[2] for c in claims])
            return [ReadAll(bool(r["ids"]) and r["holds"], list(r["ids"])) for r in rows]

        return await self._retrying(op)

    async def mark_delivered_many(self, up_to: Mapping[str, int]) -> int:
        """Set ``delivered_at`` on every undelivered row of each user up to its seq, in
        one statement (the partial index on undelivered rows keeps it cheap)."""
        users = list(up_to)

        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                """
                UPDATE herald.notifications n SET delivered_at = now()
                FROM unnest($1::text[], $2::bigint[]) AS a(user_id, up_to)
                WHERE n.user_id = a.user_id AND n.seq <= a.up_to AND n.delivered_at IS NULL
                """,
                users,
                [up_to[u] for u in users],
            )
            return int(status.split()[-1])

        return await self._retrying(op)

    async def change(self, user: str, kind: str, ids: Sequence[int]) -> int:
        """Apply lifecycle change ``kind`` (a key of ``CHANGES``) to ``user``'s rows among
        ``ids``; ids of other users, expired rows and rows already in that state are left
        alone. The
        notify_changed trigger announces the change to every node. Returns the number of
        rows changed."""
        assignment, applies = CHANGES[kind]

        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                f"""
                UPDATE herald.notifications SET {assignment}
                WHERE user_id = $1 AND id = ANY($2::bigint[]) AND {applies} AND {LIVE}
                """,
                user,
                list(ids),
            )
            return int(status.split()[-1])

        return await self._retrying(op)

    async def read_group(self, user: str, group_key: str) -> int:
        """Mark read every unread, unexpired row of ``user`` with ``group_key``
        (archived or not); pushed by the notify_changed trigger like any read. Returns
        the number of rows changed."""

        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                f"""
                UPDATE herald.notifications SET read_at = now()
                WHERE user_id = $1 AND group_key = $2 AND read_at IS NULL AND {LIVE}
                """,
                user,
                group_key,
            )
            return int(status.split()[-1])

        return await self._retrying(op)

    async def mark_all_read(self, user: str) -> int:
        """Mark all of ``user``'s rows read; the bus event says ``all`` (and the highest
        seq it marked) instead of listing ids."""

        async def op(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute("SELECT set_config('herald.read_all', $1, true)", user)
                status = await conn.execute(
                    """
                    UPDATE herald.notifications SET read_at = now()
                    WHERE user_id = $1 AND read_at IS NULL
                    """,
                    user,
                )
            return int(status.split()[-1])

        return await self._retrying(op)
