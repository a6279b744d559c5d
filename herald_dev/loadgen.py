"""Load tools shared by the cluster tests and the benchmarks: a fleet of resuming
WebSocket clients (``app.client.ResumingClient``, as a browser would behave) and a
rate-limited publisher, both reporting to a ``Checker``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Awaitable, Callable, Sequence

import asyncpg
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from app import shards
from app.client import ResumingClient
from herald_dev.checker import Checker

log = logging.getLogger(__name__)


class FleetClient(ResumingClient):
    """One user's resuming client reporting every notification to a ``Checker``, and the
    latency of those that carry their send time (``data.sent``) to ``latency``."""

    def __init__(self, url: str, user: str, token: Callable[[str], str], checker: Checker,
                 ack: bool = True, latency: Callable[[float], None] | None = None,
                 ack_delay: float = 0.5, cursor: int | None = None) -> None:
        super().__init__(url, lambda: token(user), on_frame=self._on_notification,
                         ack_delay=ack_delay if ack else None, cursor=cursor)
        self.user, self.token_for, self.checker = user, token, checker
        self._latency = latency

    def _on_notification(self, frame: dict) -> None:
        if frame.get("type") != "notification":
            return
        self.checker.received(self.user, frame["seq"])
        sent = (frame.get("data") or {}).get("sent")
        if self._latency is not None and isinstance(sent, (int, float)):
            self._latency(time.time() - sent)


def routed(url: str, user: str) -> str:
    """``url`` with ``user``'s routing key."""
    return f"{url}{'&' if '?' in url else '?'}shard={shards.shard_of(user)}"


class Fleet:
    """``users`` clients, one socket each, all through ``url`` (a load balancer), or
    through the ``url`` list in turn (user i to ``url[i % len(url)]``). With
    ``affinity`` each URL carries the user's shard (``?shard=``, app/shards.py), as
    herald.js does, for a load balancer that routes on it."""

    def __init__(self, url: str | Sequence[str], users: Sequence[str],
                 token: Callable[[str], str], checker: Checker, *,
                 affinity: bool = False) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.clients = [
            FleetClient(routed(urls[i % len(urls)], u) if affinity else urls[i % len(urls)],
                        u, token, checker)
            for i, u in enumerate(users)]

    async def start(self, timeout: float = 30) -> None:
        for client in self.clients:
            client.start()
        await self.wait_live(timeout)

    async def wait_live(self, timeout: float = 30) -> float:
        """Wait until every client is connected and welcomed; return the seconds taken."""
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(c.live.wait() for c in self.clients)), timeout)
        return time.monotonic() - started

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients))

    def by_node(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for client in self.clients:
            counts[client.node] = counts.get(client.node, 0) + 1
        return counts


Send = Callable[[str, str], Awaitable[int]]


class Publisher:
    """Sends notifications at a steady rate to random users and records each committed
    (user, seq). A send that fails is retried as a new notification after a short pause
    (the failed one, if it did commit, shows up as *unconfirmed* in the report)."""

    def __init__(self, send: Send, checker: Checker, users: Sequence[str],
                 concurrency: int = 16) -> None:
        self._send, self.checker, self._users = send, checker, list(users)
        self._slots = asyncio.Semaphore(concurrency)
        self.sent = 0
        self.failures = 0

    async def _one(self, title: str) -> None:
        user = random.choice(self._users)
        try:
            while True:
                try:
                    seq = await self._send(user, title)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                        asyncpg.InternalClientError, HTTPClientError,
                        asyncio.TimeoutError) as err:
                    self.failures += 1
                    log.debug("publish failed (%s); retrying", err)
                    await asyncio.sleep(0.05)
                    continue
                self.checker.committed(user, seq)
                self.sent += 1
                return
        finally:
            self._slots.release()

    async def run(self, rate: float, seconds: float) -> None:
        """Publish at ``rate`` per second for ``seconds``, then wait for in-flight sends."""
        sends = []
        started = time.monotonic()
        count = int(rate * seconds)
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._slots.acquire()
            sends.append(asyncio.create_task(self._one(f"load {i}")))
        await asyncio.gather(*sends)


def sql_sender(pool: asyncpg.Pool) -> Send:
    """Publish with a plain INSERT in its own transaction (the way backends write)."""

    async def send(user: str, title: str) -> int:
        seq = await pool.fetchval(
            "INSERT INTO herald.notifications (user_id, title, data) "
            "VALUES ($1, $2, jsonb_build_object('sent', $3::float8)) RETURNING seq",
            user, title, time.time(), timeout=10)
        return int(seq)

    return send


def http_sender(base_url: str, api_key: str, nodes: dict[str, int] | None = None) -> Send:
    """Publish through ``POST /api/notifications``; counts answering nodes in ``nodes``."""
    client = AsyncHTTPClient()

    async def send(user: str, title: str) -> int:
        request = HTTPRequest(
            f"{base_url}/api/notifications", method="POST",
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            body=json.dumps({"user_id": user, "title": title, "data": {"sent": time.time()}}),
            request_timeout=10)
        response = await client.fetch(request)
        if nodes is not None:
            node = response.headers.get("X-Herald-Node", "?")
            nodes[node] = nodes.get(node, 0) + 1
        return int(json.loads(response.body)["notifications"][0]["seq"])

    return send
