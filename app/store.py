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

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors after which the same statement on a fresh connection may succeed.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown / terminate_backend
    asyncpg.exceptions.CannotConnectNowError,
    # Raised when a connection died in the middle of a protocol exchange.
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

ROW_COLUMNS = "id, user_id, seq, title, body, data, link, created_at, delivered_at, read_at"


@dataclass(frozen=True)
class NewNotification:
    user_id: str
    title: str
    body: str | None = None
    data: Mapping[str, Any] | None = None
    link: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Inserted:
    id: int
    seq: int
    user_id: str
    created_at: datetime
    duplicate: bool = False  # the idempotency key was already used: this is the original


@dataclass(frozen=True)
class SessionStart:
    """What a connecting client needs: the user's newest seq, where its replay starts
    (deliver every seq above ``baseline``), and the unread count."""

    last_seq: int
    baseline: int
    unread: int


class Store:
    def __init__(self, pool: asyncpg.Pool, retries: int = 4) -> None:
        self._pool = pool
        self._retries = retries

    async def _retrying(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                async with self._pool.acquire() as conn:
                    return await op(conn)
            except CONNECTION_ERRORS as err:
                if attempt == self._retries:
                    raise
                log.warning("database connection lost (%s); retrying", type(err).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        """Raise if the database does not answer ``SELECT 1`` within 2 s."""
        async with self._pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)

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
                                                  idempotency_key)
                SELECT u, t, b, coalesce(d, '{}'::jsonb), l, k
                FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
                            $6::text[]) WITH ORDINALITY AS x(u, t, b, d, l, k, n)
                ORDER BY n
                RETURNING id, seq, user_id, created_at, idempotency_key
                """,
                [i.user_id for i in items],
                [i.title for i in items],
                [i.body for i in items],
                [None if i.data is None else dict(i.data) for i in items],
                [i.link for i in items],
                [i.idempotency_key for i in items],
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

    async def session_start(self, user: str, last_seq: int | None) -> SessionStart:
        """Where a (re)connecting client resumes.

        With a cursor, replay starts after it (clamped to the user's newest seq: a cursor
        from the future means the client saw another database). Without one, replay
        starts at the oldest undelivered row, so a new device gets everything no client
        has acknowledged yet.
        """

        async def op(conn: asyncpg.Connection) -> SessionStart:
            row = await conn.fetchrow(
                """
                SELECT coalesce((SELECT last_seq FROM herald.user_counters
                                 WHERE user_id = $1), 0) AS last_seq,
                       (SELECT min(seq) FROM herald.notifications
                        WHERE user_id = $1 AND delivered_at IS NULL) AS first_undelivered,
                       (SELECT count(*) FROM herald.notifications
                        WHERE user_id = $1 AND read_at IS NULL) AS unread
                """,
                user,
            )
            newest = int(row["last_seq"])
            if last_seq is not None:
                baseline = min(last_seq, newest)
            elif row["first_undelivered"] is not None:
                baseline = int(row["first_undelivered"]) - 1
            else:
                baseline = newest
            return SessionStart(last_seq=newest, baseline=baseline, unread=int(row["unread"]))

        return await self._retrying(op)

    async def fetch_after(
        self, cursors: Mapping[str, int], limit: int = 500
    ) -> list[asyncpg.Record]:
        """Rows with ``seq > cursors[user]``, at most ``limit`` per user, ordered by
        (user, seq). Because per-user seq order is commit order, each user's rows form an
        unbroken run starting at cursor + 1."""
        if not cursors:
            return []
        users = list(cursors)

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    f"""
                    SELECT r.* FROM unnest($1::text[], $2::bigint[]) AS c(user_id, after)
                    CROSS JOIN LATERAL (
                        SELECT {ROW_COLUMNS} FROM herald.notifications n
                        WHERE n.user_id = c.user_id AND n.seq > c.after
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
        self, user: str, limit: int, before_seq: int | None, unread_only: bool
    ) -> tuple[list[asyncpg.Record], int]:
        """A page of ``user``'s notifications, newest first, and their unread count."""

        async def op(conn: asyncpg.Connection) -> tuple[list[asyncpg.Record], int]:
            rows = await conn.fetch(
                f"""
                SELECT {ROW_COLUMNS} FROM herald.notifications
                WHERE user_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                  AND (NOT $3 OR read_at IS NULL)
                ORDER BY seq DESC LIMIT $4
                """,
                user,
                before_seq,
                unread_only,
                limit,
            )
            unread = await conn.fetchval(
                "SELECT count(*) FROM herald.notifications WHERE user_id = $1 AND read_at IS NULL",
                user,
            )
            return list(rows), int(unread)

        return await self._retrying(op)

    async def unread_counts(self, users: Iterable[str]) -> dict[str, int]:
        users = list(users)

        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            rows = await conn.fetch(
                """
                SELECT u, (SELECT count(*) FROM herald.notifications n
                           WHERE n.user_id = u AND n.read_at IS NULL) AS unread
                FROM unnest($1::text[]) AS u
                """,
                users,
            )
            return {r["u"]: int(r["unread"]) for r in rows}

        return await self._retrying(op)

    async def read_ids(self, ids_by_user: Mapping[str, Sequence[int]]) -> dict[str, set[int]]:
        """Of the given ids, those that really are read and belong to that user (bus
        payloads are untrusted: anyone may NOTIFY on the channel)."""
        wanted = {i for ids in ids_by_user.values() for i in ids}
        if not wanted:
            return {}

        async def op(conn: asyncpg.Connection) -> dict[str, set[int]]:
            rows = await conn.fetch(
                "SELECT user_id, id FROM herald.notifications "
                "WHERE id = ANY($1::bigint[]) AND read_at IS NOT NULL", list(wanted))
            found: dict[str, set[int]] = {}
            for r in rows:
                if r["id"] in ids_by_user.get(r["user_id"], ()):
                    found.setdefault(r["user_id"], set()).add(r["id"])
            return found

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

    async def mark_read(self, user: str, ids: Sequence[int]) -> int:
        """Mark ``user``'s rows among ``ids`` read; ids of other users are ignored.
        The notify_read trigger announces the change to every node."""

        async def op(conn: asyncpg.Connection) -> int:
            status = await conn.execute(
                """
                UPDATE herald.notifications SET read_at = now()
                WHERE user_id = $1 AND id = ANY($2::bigint[]) AND read_at IS NULL
                """,
                user,
                list(ids),
            )
            return int(status.split()[-1])

        return await self._retrying(op)

    async def mark_all_read(self, user: str) -> int:
        """Mark all of ``user``'s rows read; the bus event says ``all`` instead of ids."""

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
