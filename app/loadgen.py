"""Load tools shared by the cluster tests and the benchmarks: a fleet of resuming
WebSocket clients and a rate-limited publisher, both reporting to a ``Checker``.

A ``FleetClient`` behaves like a well-written browser client: it reconnects with
jittered backoff after any close and resumes from the last seq it saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import socket
import time
from typing import Awaitable, Callable, Sequence

import asyncpg
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from app import tasks
from app.checker import Checker

log = logging.getLogger(__name__)


class FleetClient:
    def __init__(self, url: str, user: str, token: Callable[[str], str], checker: Checker,
                 ack: bool = True, latency: Callable[[float], None] | None = None,
                 ack_delay: float = 0.5) -> None:
        self.url, self.user, self._token, self.checker, self._ack = url, user, token, checker, ack
        # Acks are cumulative ("everything up to seq is shown"), so a burst of frames needs
        # one ack, sent ``ack_delay`` after its first frame, not one per frame: each ack
        # is a frame the node must be woken for (bench/wakeup.py).
        self._ack_delay = ack_delay
        self._ack_timer: asyncio.TimerHandle | None = None
        self._latency = latency  # called with receive time - data.sent, when present
        self.cursor: int | None = None
        self.node = ""
        self.nodes_seen: list[str] = []
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.live = asyncio.Event()
        self._conn: WebSocketClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self._conn is not None:
            self._conn.close()
        await tasks.cancel(self._task)

    def cut(self) -> None:
        """Drop the TCP connection without a close frame, as a network cut would."""
        if self._conn is not None and self._conn.protocol is not None:
            stream = self._conn.protocol.stream
            if stream is not None:
                stream.close()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                self._conn = await websocket_connect(self.url, connect_timeout=5)
                self.connections += 1
                await self._conn.write_message(json.dumps(
                    {"type": "hello", "token": self._token(self.user), "last_seq": self.cursor,
                     "batch": True}))
                while True:
                    message = await self._conn.read_message()
                    if message is None:
                        break
                    assert isinstance(message, str)
                    for line in message.split("\n"):  # "batch": one message per line
                        self._on_frame(json.loads(line))
                    backoff = 0.05
                self.close_codes.append(self._conn.close_code)
            except (OSError, HTTPClientError, WebSocketClosedError, asyncio.TimeoutError) as err:
                log.debug("fleet %s: %s", self.user, err)
            self.live.clear()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 1.0)

    def _on_frame(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "welcome":
            self.node = frame["node"]
            self.nodes_seen.append(self.node)
            self.live.set()
        elif kind == "notification":
            seq = frame["seq"]
            self.checker.received(self.user, seq)
            sent = (frame.get("data") or {}).get("sent")
            if self._latency is not None and isinstance(sent, (int, float)):
                self._latency(time.time() - sent)
            self.cursor = seq
            if self._ack and self._ack_timer is None:
                self._ack_timer = asyncio.get_running_loop().call_later(
                    self._ack_delay, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_timer = None
        conn = self._conn
        if conn is not None and self.cursor is not None:
            try:
                conn.write_message(json.dumps({"type": "ack", "seq": self.cursor}))
            except WebSocketClosedError:
                pass  # reconnecting: the next session starts from the cursor anyway


class Fleet:
    """``users`` clients, one socket each, all through ``url``."""

    def __init__(self, url: str, users: Sequence[str], token: Callable[[str], str],
                 checker: Checker) -> None:
        self.clients = [FleetClient(url, u, token, checker) for u in users]

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


def stalled_client(port: int, token: str, host: str = "127.0.0.1") -> socket.socket:
    """A raw WebSocket client (blocking socket, tiny receive buffer) that says hello and
    then never reads again: the slow consumer every push server must survive."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        response += chunk
    if b" 101 " not in response.split(b"\r\n", 1)[0]:
        raise ConnectionError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
    payload = json.dumps({"type": "hello", "token": token}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked)
    return sock


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
        tasks = []
        started = time.monotonic()
        count = int(rate * seconds)
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._slots.acquire()
            tasks.append(asyncio.create_task(self._one(f"load {i}")))
        await asyncio.gather(*tasks)


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
