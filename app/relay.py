"""The relay: one elected node announces new rows when inserts come fast.

Why it exists: a transaction that NOTIFYs holds a database-wide lock from COMMIT through
its WAL flush, so notifying commits cannot share a flush and run one at a time. Above
``threshold`` inserts per second the relay takes NOTIFY out of the writers' commits:

* it sets a short *lease* in ``herald.relay``; while the lease holds, each INSERT
  statement leaves a pointer per user (highest seq) in ``herald.relay_pending`` instead
  of notifying (revision 0005);
* every ``interval`` seconds it calls ``herald.relay_poll()``, which deletes the pointers
  of committed transactions and announces them, one NOTIFY per chunk of users, in the
  same transaction: each pointer is announced once, whatever the commit order. The
  interval grows with the rate (``poll_interval``): each NOTIFY wakes every node and
  costs each a fetch, so at twice the threshold a poll every 10 ms carries twice the
  rows for half the round trips (measured at 2,000/s over 10,000 users: the leader spent
  15% of its time polling 200 times a second, and every node fetched as often);
* below ``CALM * threshold`` for ``calm_seconds`` it ends the lease, and the triggers notify
  at COMMIT again, which is the fastest path when commits are few.

Election: every node runs a ``Relay``; the one holding a session advisory lock on its own
connection leads, the others retry every ``standby_interval``. A leader that dies loses
the lock with its connection and stops renewing the lease, so within ``lease`` seconds
writers notify directly again; the next leader first takes a snapshot and then sends
``{"k":"sync"}``, on which every node re-reads the table for its connected users, so rows
stamped for the dead leader are delivered too. Per-user order never depends on any of
this: pointers only say "fetch from your cursor", and seq order is commit order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

import asyncpg

from app import db, models, tasks
from app.backoff import Backoff

log = logging.getLogger(__name__)

LOCK_KEY = 0x6865_7261_6C64  # "herald": the advisory lock that elects the relay
SYNC_PAYLOAD = '{"k":"sync"}'
# Batching ends below this share of the threshold. Not lower: a moderate rate just after
# a burst (500/s after 1,000/s, threshold 800) goes back to the direct NOTIFY, the
# fastest path (p50 1.8 ms against 7.4 ms relayed, bench/).
CALM = 0.75
# The poll interval grows with the rate up to this many times ``interval`` (25 ms).
MAX_INTERVAL_FACTOR = 5.0


class Relay:
    def __init__(
        self,
        dsn: str,
        node: str,
        *,
        threshold: float = 800.0,
        interval: float = 0.005,
        idle_interval: float = 0.1,
        lease: float = 3.0,
        calm_seconds: float = 2.0,
        standby_interval: float = 1.0,
        vacuum_interval: float = 2.0,
        connect: Callable[[str, str], Awaitable[asyncpg.Connection]] = db.connect,
    ) -> None:
        self._dsn = dsn
        self._node = node
        self.threshold = threshold  # inserts/s above which NOTIFY leaves the commits
        self._interval = interval  # seconds between polls while batched, at the threshold
        self._idle_interval = idle_interval  # ... while writers notify themselves
        self._lease = lease
        self.calm_seconds = calm_seconds
        self._standby_interval = standby_interval
        # The pointer table is a queue: each poll leaves dead rows behind, which the next
        # poll's scan would wade through until autovacuum (a minute away) came by.
        self._vacuum_interval = vacuum_interval
        self._connect = connect
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.leader = False
        self.batched = False
        self.rate = 0.0  # inserts per second, as last measured by the leader
        self.announced = 0  # users announced by this node's polls, for metrics and tests
        self.elections = 0
        self._renewed_at = 0.0  # monotonic time the lease was last set
        self._calm_since = 0.0  # monotonic time the rate was last at or above CALM * threshold

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="herald-relay")

    async def stop(self, grace: float = 2.0) -> None:
        """Stop between two polls; a leader ends its lease first, so writers notify
        directly at once. Not by cancelling a poll: the connection would still be busy
        unwinding it, and ending the lease on it would be a second operation at once
        (asyncpg: "cannot switch to state 12; another operation is in progress")."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except asyncio.TimeoutError:  # stuck on a dead database: the lease runs out
            await tasks.cancel(self._task)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, unless asked to stop meanwhile; True if it is time to stop."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0, jitter=True)
        while not self._stopping.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect(self._dsn, f"herald:{self._node}:relay"[:63])
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY,
                                              timeout=10):
                    backoff.reset()  # the database answers: only the election is lost
                    if await self._sleep(self._standby_interval):
                        return
                self.leader = True
                self.elections += 1
                backoff.reset()
                log.info("relay: %s leads", self._node)
                await self._lead(conn)  # returns when asked to stop
                await self._end_lease(conn)
                return
            except Exception as err:  # connection lost or refused: stand by again
                log.warning("relay: %s (%s)", type(err).__name__, err)
            finally:
                self.leader = self.batched = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # releases the advisory lock with the session
            if await self._sleep(backoff.next()):
                return

    async def _lead(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", models.CHANNEL, SYNC_PAYLOAD,
                           timeout=10)
        await self._end_lease(conn)  # a predecessor's lease is not ours to keep
        # Only the table's owner may VACUUM it (herald_owner: a node's role is a member
        # only where it migrated too); otherwise autovacuum (threshold 1,000 dead rows for
        # this table) does the job, and PostgreSQL is not asked to warn every interval.
        may_vacuum = await conn.fetchval(
            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class "
            "WHERE oid = 'herald.relay_pending'::regclass", timeout=10)
        last_id: int | None = None
        measured_at = vacuumed_at = time.monotonic()
        polled = 0  # pointers taken since the last vacuum
        self._renewed_at = self._calm_since = 0.0
        while True:
            row = await conn.fetchrow("SELECT announced, last_id FROM herald.relay_poll()",
                                      timeout=10)
            self.announced += row["announced"]
            polled += row["announced"]
            now = time.monotonic()
            if polled and may_vacuum and now - vacuumed_at >= self._vacuum_interval:
                await conn.execute("VACUUM herald.relay_pending", timeout=10)
                vacuumed_at, polled = now, 0
            if last_id is None:
                last_id = row["last_id"]
            elif now - measured_at >= 0.1:
                self.rate = (row["last_id"] - last_id) / (now - measured_at)
                last_id, measured_at = row["last_id"], now
                await self._steer(conn, now)
            # While direct, keep polling slowly: a transaction that read the lease just
            # before it ended still has pointers to announce.
            if await self._sleep(self.poll_interval() if self.batched
                                 else self._idle_interval):
                return

    def poll_interval(self) -> float:
        """Seconds to the next poll while batching: ``interval`` at the threshold, growing
        in proportion to the rate above it, at most ``MAX_INTERVAL_FACTOR`` times."""
        if self.threshold <= 0 or self.rate <= self.threshold:
            return self._interval
        return self._interval * min(MAX_INTERVAL_FACTOR, self.rate / self.threshold)

    def _wants_batching(self, now: float) -> bool:
        """Batch at ``threshold``; once batching, stop only after ``calm_seconds`` below
        ``CALM`` of it (hysteresis, so a rate near the threshold does not flap)."""
        if self.rate >= self.threshold:
            self._calm_since = now
            return True
        if not self.batched:
            return False
        if self.rate >= self.threshold * CALM:
            self._calm_since = now
        return now - self._calm_since < self.calm_seconds

    async def _steer(self, conn: asyncpg.Connection, now: float) -> None:
        """Set, renew or end the lease after a rate measurement."""
        batch = self._wants_batching(now)
        if batch and (not self.batched or now - self._renewed_at > self._lease / 3):
            await self._set_lease(conn, self._lease)
            self._renewed_at = now
            if not self.batched:
                log.info("relay: %.0f inserts/s, batching", self.rate)
        elif not batch and self.batched:
            await self._end_lease(conn)
            log.info("relay: %.0f inserts/s, writers notify again", self.rate)
        self.batched = batch

    async def _set_lease(self, conn: asyncpg.Connection, seconds: float) -> None:
        await conn.execute(
            "UPDATE herald.relay SET batched_until = clock_timestamp() + make_interval("
            "secs => $1), holder = $2 WHERE id = 1", seconds, self._node, timeout=10)

    async def _end_lease(self, conn: asyncpg.Connection) -> None:
        try:
            await conn.execute(
                "UPDATE herald.relay SET batched_until = '-infinity', holder = $1 WHERE id = 1",
                self._node, timeout=5)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError):
            pass  # the lease runs out by itself
