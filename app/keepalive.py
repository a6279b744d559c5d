"""One timer for every connection of a node: WebSocket pings, dead peers, expired tokens.

Why not Tornado's built-in ``websocket_ping_interval``: it runs a task per connection,
and with per-connection timers for token expiry that was about 2 KB of every socket's
memory. One sweep a second over the hub costs a few milliseconds at 10,000 sockets.

Pings are spread over the interval: each sweep pings only the sockets whose turn it is
(a slot per socket, one slot per sweep), so a node with 3,333 sockets sends ~133 pings a
second instead of 3,333 at once every 25 s, and its clients do not answer 3,333 pongs in
the same instant (measured: that burst was the whole p99 tail at 10,000 users).

Contract, per registered client (an ``app.connection.Connection``: ``app.hub.Client``
plus the attributes below):

* at or after ``expires_at`` (epoch seconds) the client's ``expire()`` is called once;
* every ``ping_interval`` seconds, at its turn, it is pinged (``ping_now()`` sets
  ``ping_sent_at``; its pong sets ``last_pong``);
* a client whose latest ping has gone unanswered for ``pong_timeout`` seconds is closed
  with ``close_dead()``. A peer that dies right after a pong is therefore closed within
  ``ping_interval + pong_timeout`` (docs/protocol.md, Liveness): the sweep runs often enough
  (``tick``) for that bound to hold to within a quarter of the timeout.

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
    ping_sent_at: float  # time.monotonic() of the last ping (0: none yet)

    def ping_now(self) -> None: ...

    def expire(self) -> None: ...

    def close_dead(self) -> None: ...


class Keepalive:
    def __init__(self, hub: Hub, ping_interval: float, pong_timeout: float = 10.0,
                 tick: float = 1.0) -> None:
        self._hub = hub
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._tick = min(tick, ping_interval / 4, pong_timeout / 4)
        self._slots = max(1, round(ping_interval / self._tick))
        self._turn = 0  # the slot pinged by the next sweep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="herald-keepalive")

    async def stop(self) -> None:
        await tasks.cancel(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.sweep(time.time(), time.monotonic())

    def sweep(self, now: float, mono: float) -> None:
        """Expire tokens that ran out; close peers that let a ping go unanswered past the
        timeout; ping the clients whose turn it is."""
        turn, self._turn = self._turn, (self._turn + 1) % self._slots
        # Checked every tick: unanswered for (about) the timeout, never more.
        overdue = mono - self._pong_timeout + self._tick
        for client in self._hub.all_clients():
            kept: Kept = client  # type: ignore[assignment]
            if kept.expires_at <= now:
                kept.expire()
            elif kept.last_pong < kept.ping_sent_at <= overdue:
                kept.close_dead()
            elif (id(client) >> 6) % self._slots == turn:
                kept.ping_now()
