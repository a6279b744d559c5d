"""One timer for every connection of a node: WebSocket pings, dead peers, expired tokens.

Why not Tornado's built-in ``websocket_ping_interval``: it runs a task per connection,
and with per-connection timers for token expiry that was about 2 KB of every socket's
memory. One sweep a second over the hub costs a few milliseconds at 10,000 sockets.

Contract, per registered client (``app.hub.Client`` plus the attributes below):

* at or after ``expires_at`` (epoch seconds) the client's ``expire()`` is called once;
* every ``ping_interval`` seconds it is pinged; a client that answered none of the last
  two pings (``last_pong`` older than both) is closed with ``close_dead()``.

Clients that have not said hello yet are not in the hub; their hello timeout closes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from app import tasks
from app.hub import Hub


class Kept(Protocol):
    expires_at: float
    last_pong: float  # time.monotonic() of the last pong (or of the hello)

    def ping_now(self) -> None: ...

    def expire(self) -> None: ...

    def close_dead(self) -> None: ...


class Keepalive:
    def __init__(self, hub: Hub, ping_interval: float, tick: float = 1.0) -> None:
        self._hub = hub
        self._ping_interval = ping_interval
        self._tick = min(tick, ping_interval)
        self._task: asyncio.Task[None] | None = None
        self._last_ping = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-keepalive")

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.sweep(time.time(), time.monotonic())

    def sweep(self, now: float, mono: float) -> None:
        ping = mono - self._last_ping >= self._ping_interval
        if ping:
            previous, self._last_ping = self._last_ping, mono
        for client in self._hub.all_clients():
            kept: Kept = client  # type: ignore[assignment]
            if kept.expires_at <= now:
                kept.expire()
            elif ping:
                # Pinged last round (or welcomed since) and silent ever since: dead peer.
                if kept.last_pong < previous - self._ping_interval:
                    kept.close_dead()
                else:
                    kept.ping_now()
