"""The cluster's view of itself in ``herald.nodes`` (revision 0007): each node's heartbeat
(sockets, relay leadership, draining), read back by every node (app/membership.py) and
by ``herald status``, with the NOTIFY queue, the relay's lease and the oldest row no
client acknowledged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from app.store import LIVE, PoolStore


@dataclass(frozen=True)
class NodeRow:
    """A node's last heartbeat (``herald.nodes``)."""

    name: str
    sockets: int
    started_at: datetime
    age: float  # seconds since its heartbeat
    relay_leader: bool
    draining: bool
    shards: list[int]  # the shards it listens to (revision 0011)


@dataclass(frozen=True)
class ClusterStatus:
    nodes: list[NodeRow]
    notify_queue_usage: float  # pg_notification_queue_usage()
    relay_batched_until: datetime | None  # the relay's lease, if it holds
    oldest_undelivered: asyncpg.Record | None  # (user_id, seq, created_at)


class Heartbeats(PoolStore):

    async def heartbeat(self, name: str, sockets: int, relay_leader: bool, draining: bool,
                        shards: list[int]) -> list[NodeRow]:
        """Record this node's heartbeat; return every node's latest one (this one too)."""

        async def op(conn: asyncpg.Connection) -> list[NodeRow]:
            await conn.execute(
                """
                INSERT INTO herald.nodes AS n (name, sockets, relay_leader, draining, shards)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (name) DO UPDATE SET sockets = $2, relay_leader = $3,
                    draining = $4, shards = $5, heartbeat_at = now()
                """, name, sockets, relay_leader, draining, shards)
            return await self._nodes(conn)

        return await self._retrying(op)

    async def _nodes(self, conn: asyncpg.Connection) -> list[NodeRow]:
        rows = await conn.fetch(
            "SELECT name, sockets, started_at, relay_leader, draining, shards, "
            "extract(epoch FROM now() - heartbeat_at)::float8 AS age "
            "FROM herald.nodes ORDER BY name")
        return [NodeRow(r["name"], r["sockets"], r["started_at"], r["age"],
                        r["relay_leader"], r["draining"], list(r["shards"])) for r in rows]

    async def forget_node(self, name: str) -> None:
        """A node that stops takes its row away."""
        await self._retrying(lambda conn: conn.execute(
            "DELETE FROM herald.nodes WHERE name = $1", name))

    async def cluster_status(self) -> ClusterStatus:
        """What `herald status` shows."""

        async def op(conn: asyncpg.Connection) -> ClusterStatus:
            nodes = await self._nodes(conn)
            usage = await conn.fetchval("SELECT pg_notification_queue_usage()")
            lease = await conn.fetchval(
                "SELECT batched_until FROM herald.relay WHERE id = 1 "
                "AND batched_until > clock_timestamp()")
            # The created_at index, walked from the oldest row: stops at the first
            # undelivered one.
            oldest = await conn.fetchrow(
                f"SELECT user_id, seq, created_at FROM herald.notifications "
                f"WHERE delivered_at IS NULL AND {LIVE} ORDER BY created_at LIMIT 1")
            return ClusterStatus(nodes, float(usage), lease, oldest)

        return await self._retrying(op)
