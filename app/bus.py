"""The node's one LISTEN connection: listen, detect loss, reconnect, hand events on.

Never a pool connection: asyncpg's pool runs ``UNLISTEN *`` when a connection is
released, so LISTEN lives on its own ``asyncpg.connect()``. Loss is detected two ways:
the termination listener (the server closed the socket) and a ping with a timeout every
``ping_interval`` seconds (a silently dead TCP connection raises nothing); the ping reads
``pg_notification_queue_usage()`` for the metrics and /readyz.

``on_event`` is called with each raw payload and, for a payload of the private channel
(revision 0008: its name is in ``herald_private.bus_key``, which only the owner and the
nodes' role can read), the key its MAC must verify under (revision 0009); None for one
of the public channel. It must not block. A role that cannot read the key listens on the
public channel alone, whose pointers announce every row anyway. ``on_listening``
is called every time LISTEN is (re-)established, *after* it is in place, so the node's
catch-up read of the table cannot miss a commit that happened during the gap.

Shards (revision 0011): besides ``herald`` (the cluster-wide ``sync``) the bus listens to
the channels of the shards it is asked for (``want``/``unwant``, counted: one per local
user of the shard), and ``ready(shard)`` returns once they are in place, so a session's
replay read comes after its shard's LISTEN. A shard nobody wants any more is unlistened
after ``linger`` seconds (a user who reconnects at once keeps it). All of it is redone
on each new connection before ``on_listening``. It gets
``since``: the oldest transaction id that may have committed after the previous
connection was last known to have delivered everything (read with each ping), so the
node can find the read-state changes whose announcements were lost with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

import asyncpg

from app import db, shards, tasks
from app.backoff import Backoff
from app.errors import DB_ERRORS

log = logging.getLogger(__name__)


class Bus:
    def __init__(
        self,
        dsn: str,
        channel: str,
        on_event: Callable[[str, bytes | None], None],
        on_listening: Callable[[bool, int | None], None],
        *,
        application_name: str = "herald-bus",
        ping_interval: float = 5.0,
        linger: float = 30.0,
        connect: Callable[[str, str], Awaitable[asyncpg.Connection]] = db.connect,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_event = on_event
        self._on_listening = on_listening
        self._app_name = application_name
        self._ping_interval = ping_interval
        self._connect = connect
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._private: str | None = None  # the private channel, once read
        self._mac_key: bytes | None = None  # its frames' MAC key
        self._private_prefix: str | None = None  # its shards' channels start with this
        self._linger = linger
        self._wanted: dict[int, int] = {}  # shard -> how many local users it has
        self._listening: set[int] = set()  # shards LISTENed on the current connection
        self._unlisten: dict[int, asyncio.TimerHandle] = {}  # shards about to be let go
        self._drops: set[asyncio.Future[None]] = set()  # UNLISTENs under way
        # asyncpg runs one command at a time on a connection: LISTENs, UNLISTENs and pings
        # take turns.
        self._lock = asyncio.Lock()
        self._first = asyncio.get_running_loop().create_future()  # set on first LISTEN
        self.connected = False
        self.reconnects = 0
        self.queue_usage = 0.0  # pg_notification_queue_usage(), refreshed by each ping
        # Every transaction below this xid had finished when a query on the LISTEN
        # connection last returned, so its NOTIFYs had been received by then.
        self.horizon: int | None = None

    async def start(self, timeout: float = 15.0) -> None:
        """Start listening; return once LISTEN is up. Raises ``TimeoutError`` otherwise."""
        self._task = asyncio.create_task(self._supervise(), name="herald-bus")
        await asyncio.wait_for(asyncio.shield(self._first), timeout)

    async def stop(self) -> None:
        await tasks.cancel(self._task)
        for drop in list(self._drops):
            drop.cancel()
        await self._drop()

    def _listener(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        private = channel == self._private or (
            self._private_prefix is not None and channel.startswith(self._private_prefix))
        self._on_event(payload, self._mac_key if private else None)

    # --- shards ---------------------------------------------------------------------------

    def want(self, shard: int) -> None:
        """One more local user in ``shard``: its channels must be listened to (``ready``)."""
        self._wanted[shard] = self._wanted.get(shard, 0) + 1
        timer = self._unlisten.pop(shard, None)
        if timer is not None:
            timer.cancel()

    def unwant(self, shard: int) -> None:
        """One local user of ``shard`` fewer; with none left, unlisten after ``linger``."""
        count = self._wanted.get(shard, 0) - 1
        if count > 0:
            self._wanted[shard] = count
            return
        self._wanted.pop(shard, None)
        # Even if its LISTEN is still on the way: _drop_shard looks again when it runs.
        if shard not in self._unlisten:
            self._unlisten[shard] = asyncio.get_running_loop().call_later(
                self._linger, self._start_drop, shard)

    def _start_drop(self, shard: int) -> None:
        task = asyncio.ensure_future(self._drop_shard(shard))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    def shards(self) -> list[int]:
        """The shards listened to now (``herald status``)."""
        return sorted(self._listening)

    async def ready(self, shard: int) -> None:
        """Return once ``shard`` (wanted) is listened to on the live connection, or at
        once while the bus is down: its reconnect listens first and then has the node
        re-read the table for every local user, this shard's included."""
        if shard in self._listening or not self.connected:
            return
        async with self._lock:
            conn = self._conn
            if (conn is None or not self.connected or shard in self._listening
                    or shard not in self._wanted):
                return
            try:
                # Every shard wanted and not yet listened to, in this one turn: sessions
                # of many shards starting together (a node restart) wait for one turn
                # of the lock, not one each, and so still share their first queries.
                while (missing := set(self._wanted) - self._listening) and self._conn is conn:
                    for wanted in sorted(missing):
                        await self._listen_shard(conn, wanted)
            except DB_ERRORS as err:  # asyncio.TimeoutError among them
                # A connection that cannot LISTEN is no bus: start again (listening to
                # every wanted shard, then the catch-up).
                log.warning("bus: LISTEN failed (%s); reconnecting", type(err).__name__)
                if not conn.is_closed():
                    conn.terminate()

    async def _listen_shard(self, conn: asyncpg.Connection, shard: int) -> None:
        """LISTEN to ``shard``'s channels on ``conn``; a silently dead connection must not
        hold the lock (and so the liveness ping) for long: a LISTEN gets the ping's time."""
        channels = [shards.channel(self._channel, shard)]
        if self._private is not None:
            channels.append(shards.channel(self._private, shard))
        for name in channels:
            await asyncio.wait_for(conn.add_listener(name, self._listener),
                                   self._ping_interval)
        current = self._conn  # not a connection dropped meanwhile
        if current is not None and current is conn and not current.is_closed():
            self._listening.add(shard)

    async def _drop_shard(self, shard: int) -> None:
        self._unlisten.pop(shard, None)
        async with self._lock:
            conn = self._conn
            if shard in self._wanted or shard not in self._listening or conn is None:
                return
            self._listening.discard(shard)
            try:
                await asyncio.wait_for(conn.remove_listener(
                    shards.channel(self._channel, shard), self._listener), self._ping_interval)
                if self._private is not None:
                    await asyncio.wait_for(conn.remove_listener(
                        shards.channel(self._private, shard), self._listener),
                        self._ping_interval)
            except DB_ERRORS as err:  # asyncio.TimeoutError among them
                log.info("bus: UNLISTEN for shard %d failed (%s); reconnecting", shard,
                         type(err).__name__)
                if not conn.is_closed():
                    conn.terminate()

    async def _private_channel(self, conn: asyncpg.Connection) -> tuple[str, bytes] | None:
        """The private channel's name and MAC key, or None when this role cannot read
        them (or the schema predates them): then only pointers arrive, and every row is
        fetched."""
        try:
            row = await conn.fetchrow(
                "SELECT channel, mac_key FROM herald_private.bus_key WHERE id = 1")
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError,
                asyncpg.InsufficientPrivilegeError) as err:
            if self._private is not None or not self._first.done():
                log.warning("bus: no private channel (%s); every row is fetched",
                            type(err).__name__)
            return None
        if row is None or not row["channel"] or not row["mac_key"]:
            return None
        return str(row["channel"]), bytes(row["mac_key"])

    async def _drop(self) -> None:
        self.connected = False
        self._listening.clear()
        for timer in self._unlisten.values():
            timer.cancel()
        self._unlisten.clear()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # close() could hang on a dead socket

    async def _supervise(self) -> None:
        backoff = Backoff(0.1, 5.0, jitter=True)
        while True:
            lost = asyncio.Event()
            try:
                self._conn = await self._connect(self._dsn, self._app_name)
                # Bind this iteration's event: a late callback from an old connection must not
                # mark its successor as lost.
                self._conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await self._conn.add_listener(self._channel, self._listener)
                private = await self._private_channel(self._conn)
                self._private, self._mac_key = private or (None, None)
                self._private_prefix = None if self._private is None else self._private + "_"
                if self._private is not None:
                    await self._conn.add_listener(self._private, self._listener)
                async with self._lock:
                    # The old connection was good up to its horizon; the new one from
                    # now (read before the shards' LISTENs: an earlier horizon only
                    # makes the next catch-up look further back).
                    since, self.horizon = self.horizon, await self._ping()
                    # Every shard wanted, including those wanted meanwhile: none can be
                    # wanted between the last check and ``connected`` (no await there).
                    while missing := set(self._wanted) - self._listening:
                        for shard in sorted(missing):
                            await self._listen_shard(self._conn, shard)
                    self.connected = True
                reconnected = self._first.done()
                if reconnected:
                    self.reconnects += 1
                    log.warning("bus: LISTEN re-established; catching up")
                else:
                    self._first.set_result(None)
                self._on_listening(reconnected, since if reconnected else None)
                backoff.reset()
                await self._watch(lost)
                log.warning("bus: LISTEN connection lost")
            except asyncio.CancelledError:
                raise
            except Exception as err:  # any failure to connect: log it and retry with backoff
                log.warning("bus: cannot listen (%s: %s)", type(err).__name__, err)
            finally:
                await self._drop()
            await asyncio.sleep(backoff.next())

    async def _watch(self, lost: asyncio.Event) -> None:
        """Return when the connection is lost or stops answering pings."""
        assert self._conn is not None
        while True:
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                # A LISTEN stuck on a dead connection holds the lock: waiting longer
                # than a ping would take is a lost connection too.
                await asyncio.wait_for(self._lock.acquire(), self._ping_interval)
                try:
                    self.horizon = await self._ping()
                finally:
                    self._lock.release()
            except DB_ERRORS as err:  # asyncio.TimeoutError among them
                log.warning("bus: ping failed (%s)", type(err).__name__)
                return

    async def _ping(self) -> int:
        """Check the connection answers; read the NOTIFY queue's usage (8 GB shared by all
        listeners: one that falls behind makes it fill up); return the xid horizon:
        when the answer arrives, the NOTIFYs of every transaction below it have too."""
        assert self._conn is not None
        row = await self._conn.fetchrow(
            "SELECT pg_notification_queue_usage() AS usage, "
            "pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon",
            timeout=self._ping_interval)
        self.queue_usage = float(row["usage"])
        return int(row["horizon"])
