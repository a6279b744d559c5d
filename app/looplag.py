"""Event-loop lag: how long a timer that is due waits before the loop runs it.

Everything a node does runs on one event loop, so any piece of work that does not yield
(a big fan-out, a garbage collection, a sweep over every socket) delays every socket's
frames by as long. A task sleeps ``interval`` seconds over and over and records by how
much each wake-up came late; ``herald_event_loop_lag_seconds`` is that histogram and
``Loopwatch.max`` the worst seen since the start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from app import tasks


class Loopwatch:
    def __init__(self, observe: Callable[[float], None], interval: float = 0.05) -> None:
        self._observe = observe
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.max = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-loopwatch")

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self._interval
            await asyncio.sleep(self._interval)
            lag = max(0.0, time.perf_counter() - due)
            self.max = max(self.max, lag)
            self._observe(lag)
