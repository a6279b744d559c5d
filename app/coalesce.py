"""Merge concurrent requests into one batch: while a batch is in flight, new requests
wait and go together in the next one.

A thousand clients reconnecting at once (a node restart, a network blip) would otherwise
be a thousand session-start queries and a thousand replay queries, each a round trip that
wakes a PostgreSQL backend on the same few cores. Batched, they are a handful of
``unnest`` queries, and a lone request still goes out at once (no timer, no added delay).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """``await coalescer(key)`` → the value ``run`` computed for ``key`` in a batch.

    ``run`` takes the keys of a batch and returns one value per key, in order. If it
    raises, every caller of that batch gets the exception."""

    def __init__(self, run: Callable[[Sequence[K]], Awaitable[Sequence[V]]],
                 max_batch: int = 1000) -> None:
        self._run = run
        self._max_batch = max_batch
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._flushing = False

    async def __call__(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending.append((key, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                try:
                    values = await self._run([key for key, _ in batch])
                except Exception as err:  # every waiter of this batch gets it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, future), value in zip(batch, values, strict=True):
                    if not future.done():  # the waiter may have been cancelled
                        future.set_result(value)
        finally:
            self._flushing = False
