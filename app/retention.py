"""Retention: old and expired rows are deleted in small batches, one pruner at a time.

With ``HERALD_RETENTION_DAYS`` set, the node that leads the relay (one per cluster, see
app/relay.py) runs a pass every ``interval`` seconds: it deletes rows created more than
that many days ago and rows whose ``expires_at`` has passed, ``batch`` rows per short
transaction with ``pause`` seconds between transactions, until none are left. Each batch
also takes a cluster-wide advisory lock (``RetentionStore.prune``), so a pass of
``herald prune`` and a node's pass never delete at the same moment, and skips rows someone else has
locked instead of waiting for them: inserts are never held up.

Deleting rows never disturbs delivery: a fetch from any cursor simply finds the rows that
remain (see app/hub.py). Per-user seq counters live in ``herald.user_counters`` and are
never pruned, so seqs do not restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import asyncpg

from app import tasks
from app.errors import DB_ERRORS
from app.store import PoolStore

log = logging.getLogger(__name__)


# Only one pruner at a time in the whole cluster (nodes and `herald prune`): each batch
# takes this transaction-scoped advisory lock, or skips.
PRUNE_LOCK_KEY = 0x6865_7261_6C65  # "herale"


@dataclass(frozen=True)
class Pruned:
    old: int  # rows created before the cutoff
    expired: int
    # Where the next batch may start: the highest created_at / expires_at deleted (rows
    # below them are gone, or were locked and are left for the next pass).
    old_from: datetime | None = None
    expired_from: datetime | None = None


class RetentionStore(PoolStore):
    """The deletes of retention, in short transactions one pruner at a time."""

    async def prune(
        self, older_than: datetime | None, limit: int, start: Pruned | None = None
    ) -> Pruned | None:
        """Delete at most ``limit`` rows created before ``older_than`` (if given) and at
        most ``limit`` expired rows, oldest first, in one short transaction; ``start``
        (the previous batch's result) lets the index scans begin where that one ended
        instead of wading through the entries of rows just deleted.

        Returns None, deleting nothing, while another pruner holds the cluster's prune
        lock. Rows locked by someone else (an ack, a read) are skipped, not waited for,
        so a batch never holds up writers; the next pass takes them."""
        old_from = start.old_from if start else None
        expired_from = start.expired_from if start else None

        async def op(conn: asyncpg.Connection) -> Pruned | None:
            async with conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)",
                                           PRUNE_LOCK_KEY):
                    return None
                old = None
                if older_than is not None:
                    old = await conn.fetchrow(
                        """
                        WITH gone AS (
                            DELETE FROM herald.notifications WHERE id IN (
                                SELECT id FROM herald.notifications
                                WHERE created_at < $1
                                  AND ($3::timestamptz IS NULL OR created_at >= $3)
                                ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                            RETURNING created_at)
                        SELECT count(*) AS n, max(created_at) AS upto FROM gone
                        """,
                        older_than, limit, old_from)
                expired = await conn.fetchrow(
                    """
                    WITH gone AS (
                        DELETE FROM herald.notifications WHERE id IN (
                            SELECT id FROM herald.notifications
                            WHERE expires_at <= now()
                              AND ($2::timestamptz IS NULL OR expires_at >= $2)
                            ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                        RETURNING expires_at)
                    SELECT count(*) AS n, max(expires_at) AS upto FROM gone
                    """,
                    limit, expired_from)
            return Pruned(old["n"] if old else 0, expired["n"],
                          (old["upto"] if old else None) or old_from,
                          expired["upto"] or expired_from)

        return await self._retrying(op)


class PruneBusy(Exception):
    """Another pruner held the lock for longer than we were willing to wait."""


PASS_ERRORS: tuple[type[BaseException], ...] = (PruneBusy, *DB_ERRORS)


@dataclass
class PassResult:
    old: int = 0  # rows created before the cutoff
    expired: int = 0

    @property
    def total(self) -> int:
        return self.old + self.expired


def cutoff(older_than_days: float | None, now: datetime | None = None) -> datetime | None:
    """The ``created_at`` below which rows go, or None when age does not count."""
    if not older_than_days:
        return None
    return (now or datetime.now(timezone.utc)) - timedelta(days=older_than_days)


async def prune_pass(
    store: RetentionStore, older_than_days: float | None, *, batch: int = 1000,
    pause: float = 0.1,
    busy_timeout: float = 60.0, on_batch: Callable[[int], None] | None = None,
) -> PassResult:
    """Delete every row older than ``older_than_days`` (None or 0: none by age) and every
    expired row, ``batch`` at a time. Raises ``PruneBusy`` if another pruner holds the
    lock for ``busy_timeout`` seconds in a row (one pass waits for another's pauses)."""
    result = PassResult()
    limit = cutoff(older_than_days)
    waited_since: float | None = None
    last: Pruned | None = None
    while True:
        pruned = await store.prune(limit, batch, last)
        if pruned is None:
            now = time.monotonic()
            waited_since = waited_since or now
            if now - waited_since > busy_timeout:
                raise PruneBusy(f"another pruner held the lock for {busy_timeout:.0f} s")
            await asyncio.sleep(max(pause, 0.05))
            continue
        waited_since = None
        last = pruned
        result.old += pruned.old
        result.expired += pruned.expired
        if on_batch is not None:
            on_batch(pruned.old + pruned.expired)
        if pruned.old < batch and pruned.expired < batch:
            return result
        await asyncio.sleep(pause)


class Pruner:
    """The periodic pass of a node; runs only while ``leads()`` is true."""

    def __init__(
        self, store: RetentionStore, retention_days: float, leads: Callable[[], bool],
        on_deleted: Callable[[int], None], *, interval: float = 60.0, batch: int = 1000,
        pause: float = 0.1,
    ) -> None:
        self._store = store
        self.retention_days = retention_days
        self._leads = leads
        self._on_deleted = on_deleted
        self._interval = interval
        self._batch = batch
        self._pause = pause
        self._task: asyncio.Task[None] | None = None
        self.passes = 0

    def start(self) -> None:
        if self.retention_days > 0:
            self._task = asyncio.create_task(self._run(), name="herald-pruner")

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if not self._leads():
                continue
            try:
                result = await prune_pass(self._store, self.retention_days,
                                          batch=self._batch, pause=self._pause,
                                          on_batch=self._on_deleted)
            except PASS_ERRORS as err:
                log.warning("retention: pass stopped (%s: %s)", type(err).__name__, err)
                continue
            except Exception:  # never end the loop: retention would stop for good, quietly
                log.exception("retention: pass failed unexpectedly")
                continue
            self.passes += 1
            if result.total:
                log.info("retention: deleted %d rows (%d older than %g days, %d expired)",
                         result.total, result.old, self.retention_days, result.expired)
