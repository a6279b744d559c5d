"""This node in the cluster: its heartbeat in ``herald.nodes``, and its share of the sockets.

A load balancer spreads *new* connections; after a rolling restart the node restarted
last holds most sockets (196 / 3 / 1 in a cluster run) and nothing moves them. Every
``interval`` seconds a node writes its heartbeat (sockets, relay leadership, draining)
and reads everyone's. A node holding clearly more than its share (``factor`` times the
mean of the live, non-draining nodes) sheds the surplus gradually: every second it
closes a few of its sockets (``rate`` of them, at least one) with 1001, and the clients
reconnect through the load balancer at once, most of them to the other nodes. Never
while this node drains (it is closing everything anyway), never alone (a single node has
nowhere to send anyone), and slowly enough that the reconnects are no storm. A ``rate``
of 0 turns it off.

A node that stops deletes its row; the row of a node that died goes stale and is ignored
after ``3 * interval``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Callable

from app import protocol, tasks
from app.errors import DB_ERRORS
from app.heartbeats import Heartbeats, NodeRow
from app.hub import Hub

log = logging.getLogger(__name__)


class Membership:
    def __init__(self, store: Heartbeats, hub: Hub, name: str, leads: Callable[[], bool],
                 on_shed: Callable[[int], None], *, shards: Callable[[], list[int]] = list,
                 interval: float = 2.0,
                 factor: float = 1.25, rate: float = 0.03) -> None:
        self._store = store
        self._hub = hub
        self.name = name
        self._leads = leads
        self._on_shed = on_shed
        self._shards = shards  # the shards the bus listens to, for herald status
        self._interval = interval
        self._factor = factor
        self._rate = rate
        self._task: asyncio.Task[None] | None = None
        self.surplus = 0  # sockets above this node's share, as of the last heartbeat
        self._seen_surplus = False  # the previous heartbeat found a surplus too
        self.nodes: list[NodeRow] = []  # the last heartbeats read

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-membership")

    async def stop(self) -> None:
        """Stop; take this node's row away (best effort: the database may be gone)."""
        await tasks.cancel(self._task)
        try:
            await asyncio.wait_for(self._store.forget_node(self.name), 2)
        except DB_ERRORS:  # asyncio.TimeoutError among them
            pass

    def share(self, nodes: list[NodeRow]) -> float | None:
        """The mean sockets of the live nodes that take new ones (None: no other)."""
        serving = [n for n in nodes if n.age < 3 * self._interval and not n.draining]
        if len(serving) < 2 or not any(n.name == self.name for n in serving):
            return None
        return sum(n.sockets for n in serving) / len(serving)

    async def _run(self) -> None:
        ticks_per_beat = max(1, round(self._interval))
        tick = 0
        while True:
            if tick % ticks_per_beat == 0:
                await self._beat()
            tick += 1
            self._shed()
            await asyncio.sleep(self._interval / ticks_per_beat)

    async def _beat(self) -> None:
        sockets = self._hub.count()
        try:
            self.nodes = await self._store.heartbeat(self.name, sockets, self._leads(),
                                                     self._hub.draining, self._shards())
        except DB_ERRORS as err:
            log.warning("membership: heartbeat failed (%s)", type(err).__name__)
            self.surplus = 0  # blind: do not move anyone
            return
        mean = self.share(self.nodes)
        if (mean is None or self._rate <= 0 or self._hub.draining
                or sockets <= self._factor * mean + 1):
            self.surplus = 0
            self._seen_surplus = False
        elif not self._seen_surplus:
            # Another node's row may be up to an interval old (it may have taken its
            # sockets since): act only on a surplus two heartbeats in a row show, by
            # when every node has written a fresh one.
            self._seen_surplus = True
            self.surplus = 0
        else:
            self.surplus = int(sockets - mean)

    def _shed(self) -> None:
        """Close this second's few sockets of the surplus."""
        if self.surplus <= 0 or self._hub.draining:
            return
        clients = self._hub.all_clients()
        count = min(self.surplus, max(1, math.ceil(len(clients) * self._rate)), len(clients))
        for client in random.sample(clients, count):
            client.close(protocol.CLOSE_GOING_AWAY, "rebalancing: reconnect")
        self.surplus -= count
        self._on_shed(count)
        log.info("membership: shed %d sockets (%d to go)", count, self.surplus)
