"""The heart of a node: bus events in, rows fetched, frames handed to the hub.

    bus payload ─► queue ─► one worker task ─► which local users care? ─► one batched
    fetch per round ─► hub.deliver (cursor-ordered) ─► sockets

Also here: a client's session start (welcome, then replay from the table) and the
catch-up of every local user after the bus was lost. Holds no SQL text (``store`` does)
and no sockets (``hub`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

import asyncpg

from app import protocol
from app.hub import Client, Hub
from app.metrics import Metrics
from app.store import CONNECTION_ERRORS, Store

log = logging.getLogger(__name__)

_CATCH_UP = object()  # sentinel: re-read the table for every local user
_WAKE = object()  # sentinel: run a round to retry what failed
_RESUME = object()  # (_RESUME, user): a paused connection drained; fetch from its cursor

DB_ERRORS = CONNECTION_ERRORS + (asyncpg.PostgresError,)


class Node:
    def __init__(
        self, name: str, store: Store, hub: Hub, metrics: Metrics, fetch_limit: int = 500,
        ack_interval: float = 0.05,
    ) -> None:
        self.name = name
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._fetch_limit = fetch_limit
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._retry_users: set[str] = set()
        self._retry_reads: list[protocol.ReadEvent] = []
        self._retry_delay = 0.1
        self._acks: dict[str, int] = {}  # user -> highest acked seq not yet written
        # At most one ack UPDATE per interval: each is a commit (a WAL flush) competing
        # with the writers' inserts, and a socket acks every frame.
        self._ack_interval = ack_interval
        self._ack_writer: asyncio.Task[None] | None = None

    # --- bus side ---------------------------------------------------------------------

    def enqueue(self, payload: str) -> None:
        """The bus callback: only enqueue (it runs inside asyncpg's protocol callback)."""
        self._queue.put_nowait(payload)

    def on_listening(self, reconnected: bool) -> None:
        """LISTEN is (again) in place: read the table for every local user, since NOTIFYs
        sent while it was down are gone for good."""
        if reconnected:
            self._metrics.bus_reconnects.inc()
        self._queue.put_nowait(_CATCH_UP)

    async def run(self) -> None:
        """The worker: process queued events in rounds until cancelled."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < 10_000:
                items.append(self._queue.get_nowait())
            await self._round(items)

    async def _round(self, items: Sequence[Any]) -> None:
        catch_up = False
        resumed: set[str] = set()
        wanted: dict[str, int] = {}
        reads: list[protocol.ReadEvent] = []
        for item in items:
            if item is _CATCH_UP:
                catch_up = True
                continue
            if item is _WAKE:
                continue
            if isinstance(item, tuple) and item[0] is _RESUME:
                resumed.add(item[1])
                continue
            try:
                event = protocol.parse_bus_event(item)
            except protocol.ProtocolError as err:
                self._metrics.refused.labels("bus_payload").inc()
                log.warning("bus: ignored payload (%s): %.200r", err.message, item)
                continue
            if isinstance(event, protocol.SyncEvent):
                self._metrics.bus_events.labels("sync").inc()
                catch_up = True
            elif isinstance(event, protocol.NewEvent):
                self._metrics.bus_events.labels("new").inc()
                for user, seq in event.users.items():
                    if seq > wanted.get(user, 0):
                        wanted[user] = seq
            else:
                self._metrics.bus_events.labels("read").inc()
                if self._hub.clients(event.user):
                    reads.append(event)

        replay_users = set(self._retry_users) | resumed
        if catch_up:
            replay_users.update(self._hub.users())
        live_users = set()
        for user, seq in wanted.items():
            floor = self._hub.cursor_floor(user)
            if floor is not None and floor < seq and user not in replay_users:
                live_users.add(user)
        reads = self._retry_reads + reads
        self._retry_users, self._retry_reads = set(), []
        try:
            if replay_users:
                await self.fetch_and_deliver(replay_users, self._metrics.replayed)
            if live_users:
                await self.fetch_and_deliver(live_users, self._metrics.delivered, latency=True)
            if reads:
                await self._push_reads(reads)
            self._retry_delay = 0.1
        except Exception as err:
            # The rows are safe in the table and the cursors say where each client is:
            # remember who needs a fetch and try again shortly. Any error (asyncpg also
            # raises non-Postgres errors when a connection dies mid-operation) must not
            # end the worker, or this node would silently stop delivering.
            if isinstance(err, DB_ERRORS):
                log.warning("node: delivery round failed (%s); retrying", type(err).__name__)
            else:
                log.exception("node: delivery round failed unexpectedly; retrying")
            self._retry_users |= replay_users | live_users
            self._retry_reads = reads
            asyncio.get_running_loop().call_later(
                self._retry_delay, self._queue.put_nowait, _WAKE
            )
            self._retry_delay = min(self._retry_delay * 2, 5.0)

    async def fetch_and_deliver(
        self, users: set[str], counter: Any, latency: bool = False
    ) -> None:
        """Fetch every row above each user's lowest local cursor and deliver it, page by
        page, until the users are caught up."""
        floors = {u: f for u in users
                  if (f := self._hub.cursor_floor(u, ready_only=True)) is not None}
        while floors:
            rows = await self._store.fetch_after(floors, self._fetch_limit)
            by_user: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for row in rows:
                by_user[row["user_id"]].append(row)
            next_floors: dict[str, int] = {}
            now = time.time()
            for user, user_rows in by_user.items():
                frames = [(r["seq"], protocol.notification(r)) for r in user_rows]
                sent = self._hub.deliver(user, frames)
                counter.inc(len(sent))
                if latency and sent:
                    created = {r["seq"]: r["created_at"].timestamp() for r in user_rows}
                    for seq in sent:
                        self._metrics.latency.observe(max(0.0, now - created[seq]))
                floor = self._hub.cursor_floor(user, ready_only=True)
                # A full page means there may be more; continue only if progress was made.
                if len(user_rows) == self._fetch_limit and floor is not None:
                    if floor > floors[user]:
                        next_floors[user] = floor
            floors = next_floors

    async def _push_reads(self, reads: Sequence[protocol.ReadEvent]) -> None:
        counts = await self._store.unread_counts({r.user for r in reads})
        claimed: dict[str, list[int]] = defaultdict(list)
        for event in reads:
            claimed[event.user].extend(event.ids)
        verified = await self._store.read_ids(claimed)
        for event in reads:
            ids = [i for i in event.ids if i in verified.get(event.user, ())]
            if not ids and not event.all:
                continue  # a forged or stale event: nothing it names is read
            frame = protocol.read(ids, counts.get(event.user, 0), all=event.all)
            self._hub.broadcast(event.user, frame)

    # --- client side ------------------------------------------------------------------

    async def open_session(self, client: Client, last_seq: int | None) -> None:
        """Welcome ``client``, register it, and replay what it missed.

        Order matters: the welcome goes first; the client joins the hub *before* the
        replay reads the table, so a row committed at any moment is either in the replay
        or announced by the bus after the client is registered. The hub's cursor rule
        drops whatever both paths deliver.
        """
        start = await self._store.session_start(client.user, last_seq)
        client.cursor = start.baseline
        client.send(protocol.welcome(client.user, self.name, start.last_seq, start.unread))
        self._hub.add(client)
        while True:
            before = client.cursor
            rows = await self._store.fetch_after({client.user: before}, self._fetch_limit)
            sent = self._hub.deliver_to(
                client, [(r["seq"], protocol.notification(r)) for r in rows]
            )
            self._metrics.replayed.inc(len(sent))
            if len(rows) < self._fetch_limit or client.cursor == before:
                return

    def resume(self, client: Client) -> None:
        """``client`` drained its write buffer after a backpressure pause: fetch from its
        cursor in the next round."""
        self._queue.put_nowait((_RESUME, client.user))

    def close_session(self, client: Client) -> None:
        self._hub.remove(client)

    def ack(self, client: Client, seq: int) -> None:
        """Mark delivered up to ``seq``, but never past what this connection was sent.

        Acks are merged per user and written by one task, one UPDATE for every user acked
        since the last one: with thousands of sockets acking each frame, the database
        sees a handful of statements per second instead of one per notification."""
        up_to = min(seq, client.cursor)
        if up_to <= self._acks.get(client.user, 0):
            return
        self._acks[client.user] = up_to
        if self._ack_writer is None or self._ack_writer.done():
            self._ack_writer = asyncio.create_task(self._write_acks())

    async def _write_acks(self) -> None:
        delay = 0.1
        while self._acks:
            batch, self._acks = self._acks, {}
            try:
                await self._store.mark_delivered_many(batch)
                delay = 0.1
                await asyncio.sleep(self._ack_interval)  # let the next batch gather
            except DB_ERRORS as err:
                # Put them back (newer acks win) and try again: delivered_at is a record,
                # not a delivery mechanism, so a late write loses nothing.
                log.warning("node: writing acks failed (%s); retrying", type(err).__name__)
                for user, seq in batch.items():
                    if seq > self._acks.get(user, 0):
                        self._acks[user] = seq
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def flush_acks(self) -> None:
        """Wait until every ack received so far is written (shutdown, tests)."""
        while self._ack_writer is not None and not self._ack_writer.done():
            await asyncio.shield(self._ack_writer)

    async def read(self, user: str, ids: Sequence[int], all: bool) -> int:
        """Mark rows read; the trigger's bus event pushes the change to every node."""
        if all:
            return await self._store.mark_all_read(user)
        return await self._store.mark_read(user, ids)

    async def unread(self, user: str) -> int:
        counts: Mapping[str, int] = await self._store.unread_counts([user])
        return counts.get(user, 0)

    def shutdown(self, code: int, reason: str) -> None:
        self._hub.close_all(code, reason)
