"""Acks become ``delivered_at``: merged per user, written by one task, one UPDATE per
interval for every user acked since the last one.

With thousands of sockets acking each frame, the database sees a handful of statements
per second instead of one per notification: each UPDATE is a commit (a WAL flush)
competing with the writers' inserts, and a round trip costing the node ~1 ms of CPU
(py-spy). ``delivered_at`` is a record (what a new device is replayed), not a delivery
mechanism, so a write that fails is retried later and loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Mapping

from app.backoff import Backoff
from app.errors import DB_ERRORS

log = logging.getLogger(__name__)


class AckWriter:
    def __init__(self, write: Callable[[Mapping[str, int]], Awaitable[object]],
                 interval: float = 0.25) -> None:
        self._write = write  # Store.mark_delivered_many
        self._interval = interval
        self._pending: dict[str, int] = {}  # user -> highest acked seq not yet written
        self._task: asyncio.Task[None] | None = None

    def ack(self, user: str, up_to: int) -> None:
        """Everything of ``user`` up to seq ``up_to`` was shown (already clamped to what
        the acking socket was sent)."""
        if up_to <= self._pending.get(user, 0):
            return
        self._pending[user] = up_to
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                await self._write(batch)
                backoff.reset()
                await asyncio.sleep(self._interval)  # let the next batch gather
            except DB_ERRORS as err:
                # Put them back (newer acks win) and try again.
                log.warning("acks: writing failed (%s); retrying", type(err).__name__)
                for user, seq in batch.items():
                    if seq > self._pending.get(user, 0):
                        self._pending[user] = seq
                await asyncio.sleep(backoff.next())

    async def flush(self) -> None:
        """Wait until every ack received so far is written (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)
