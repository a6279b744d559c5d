"""Test helpers: a real WebSocket client, and small waiting utilities."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.error import URLError
from urllib.request import urlopen

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection

from app import bus_payloads, client, shards


class WsClient:
    """A WebSocket client speaking Herald's protocol over a real socket, one step at a
    time (``app.client`` writes the frames), so tests can also send what a good client
    never would."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []  # every frame received, in order
        self._pending: list[dict[str, Any]] = []  # received by sync(), not yet recv()d

    @classmethod
    async def connect(cls, port: int, headers: dict[str, str] | None = None,
                      path: str = "/ws") -> "WsClient":
        return cls(await client.connect(f"ws://127.0.0.1:{port}{path}", headers))

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        await self.conn.write_message(frame, binary=isinstance(frame, bytes))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next frame, or None if the server closed the connection."""
        if self._pending:
            return self._pending.pop(0)
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        if message is None:
            return None
        frame = json.loads(message)
        self.frames.append(frame)
        return frame

    async def hello(self, token: str | None, last_seq: int | None = None,
                    batch: bool = False) -> dict[str, Any]:
        await self.send(client.hello_frame(token, last_seq, batch))
        welcome = await self.recv()
        assert welcome is not None and welcome["type"] == "welcome", welcome
        return welcome

    async def sync(self, timeout: float = 5.0) -> None:
        """Round-trip a ping: the node handles a connection's frames in order, so once the
        pong is back, the session (welcome and replay) is fully set up. Frames that
        arrived before the pong stay queued for ``recv``."""
        await self.send({"type": "ping"})
        held = []
        while True:
            frame = await self.recv(timeout)
            assert frame is not None, "closed during sync"
            if frame["type"] == "pong":
                break
            held.append(frame)
        self._pending = held + self._pending

    async def notifications(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Receive until ``count`` notification frames arrived (other frames are kept in
        ``self.frames``). Fails on timeout or close."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            assert frame is not None, f"closed after {len(got)} of {count}"
            if frame["type"] == "notification":
                got.append(frame)
        return got

    async def nothing_before_sentinel(self, sql: Any, user: str) -> dict[str, Any]:
        """A positive check that no other notification was pushed: commit a marker row for
        ``user`` and read until it arrives. Per-user seq order is commit order and each
        socket gets a user's rows in seq order, so any notification committed before the
        marker would have arrived first: none may have. Returns the marker's frame.
        (Change frames are pushed after the notifications of the same round, so they are
        not covered: use ``expect_silence`` for those.)"""
        title = f"sentinel {time.monotonic_ns()}"
        await sql.execute("INSERT INTO herald.notifications (user_id, title) VALUES ($1, $2)",
                          user, title)
        frame = await self.recv(10)
        assert frame is not None and frame.get("title") == title, \
            f"{frame} arrived before the sentinel"
        return frame

    async def expect_silence(self, seconds: float = 0.5) -> None:
        """Assert that no frame arrives within ``seconds``."""
        try:
            frame = await self.recv(seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the server closes; return (close code, frames seen before)."""
        seen: list[dict[str, Any]] = []
        while True:
            frame = await self.recv(timeout)
            if frame is None:
                return self.conn.close_code, seen
            seen.append(frame)

    def close(self) -> None:
        self.conn.close()


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def notification_frame(seq: int, title: str, **fields: Any) -> dict[str, Any]:
    """A notification frame with every field the trigger renders (docs/protocol.md)."""
    frame = {"type": "notification", "id": 0, "seq": seq, "title": title, "body": None,
             "data": {}, "link": None, "category": None, "group_key": None,
             "created_at": "2026-12-04T00:00:00Z",
             "expires_at": None, "read": False, "archived": False}
    frame.update(fields)
    return frame


async def listen_everywhere(conn: Any, base: str, callback: Any) -> None:
    """LISTEN on channel ``base`` and on every shard's part of it (app/shards.py):
    whatever Herald announces there, for any user."""
    await conn.add_listener(base, callback)
    for shard in range(shards.SHARDS):
        await conn.add_listener(shards.channel(base, shard), callback)


async def private_channel(conn: Any) -> tuple[str, bytes]:
    """The private channel's name and MAC key (as a role that may read them)."""
    row = await conn.fetchrow("SELECT channel, mac_key FROM herald_private.bus_key WHERE id = 1")
    return row["channel"], bytes(row["mac_key"])


def frame_payload(user: str, frame: dict[str, Any], key: bytes | None,
                  seq: int | None = None) -> str:
    """A private-channel payload as the trigger sends it, MAC first (``key`` None: an
    all-zero MAC, as a role that knows the channel's name but not the key would send)."""

    body = json.dumps({"k": "frame", "u": user, "s": frame["seq"] if seq is None else seq,
                       "t": 0, "f": json.dumps(frame)})
    return (bus_payloads.frame_mac(key, body) if key is not None else "0" * 64) + body


# --- processes and HTTP --------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any HERALD_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(extra)
    return env


def wait_http(port: int, path: str = "/readyz", timeout: float = 60) -> None:
    """Until ``path`` answers 200 on ``port`` (a node started in another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (URLError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"port {port} never answered {path}")


async def call(port: int, method: str, path: str, body: Any = None,
               token: str | None = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request to a node: its status and its JSON body (or its text)."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    payload = raw if raw is not None else (None if body is None else json.dumps(body))
    request = HTTPRequest(f"http://127.0.0.1:{port}{path}", method=method, body=payload,
                          headers=all_headers, allow_nonstandard_methods=True)
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    text = response.body.decode()
    try:
        return response.code, json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or deeper than Python's parser goes
        return response.code, text


async def metric(port: int, name: str) -> float:
    """The value of one sample of ``/metrics`` (0.0 when absent)."""
    _, text = await call(port, "GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and " " in line:
            key, value = line.rsplit(" ", 1)
            if key == name:
                return float(value)
    return 0.0
