"""A Python client for Herald's WebSocket protocol (docs/protocol.md).

The one client every Python caller uses: ``herald tail``, the test suite's ``WsClient``
and the load fleet of the cluster tests and benchmarks. ``hello``/``ack`` frames and the
``"batch"`` message format are written here and nowhere else.

``ResumingClient`` behaves like a well-written browser client (static/herald.js): it
reconnects with jittered backoff after any close and resumes from the last seq it saw,
and acks cumulatively (one ack for a whole burst).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, websocket_connect

from app import tasks
from app.backoff import Backoff

log = logging.getLogger(__name__)

Frame = dict[str, Any]
CONNECT_ERRORS = (OSError, HTTPClientError, WebSocketClosedError, asyncio.TimeoutError)


def hello_frame(token: str | None, last_seq: int | None = None, batch: bool = False) -> str:
    """The first frame of a session. ``token`` None leaves it out (the cookie decides)."""
    frame: Frame = {"type": "hello", "last_seq": last_seq}
    if token is not None:
        frame["token"] = token
    if batch:
        frame["batch"] = True
    return json.dumps(frame)


def ack_frame(seq: int) -> str:
    """Everything up to ``seq`` has been shown (cumulative)."""
    return json.dumps({"type": "ack", "seq": seq})


def parse(message: str) -> list[Frame]:
    """The frames of one server message: one, or one per line after ``"batch": true``
    (JSON text never holds a raw newline, so splitting on it is exact)."""
    return [json.loads(line) for line in message.split("\n")]


async def connect(url: str, headers: dict[str, str] | None = None,
                  timeout: float = 5.0) -> WebSocketClientConnection:
    """Open a WebSocket to ``url`` (``ws://host:port/ws``)."""
    return await websocket_connect(HTTPRequest(url, headers=headers or {},
                                               connect_timeout=timeout))


class ResumingClient:
    """One user's connection that survives closes: reconnect, hello with the cursor, go on.

    ``on_frame`` sees every server frame. ``ack_delay`` None never acks; 0 acks after
    each message; a positive delay sends one ack that long after the first unacked frame
    (each ack is a frame the node is woken for: bursts should cost one). A close with a
    code in ``stop_on`` ends ``run()``, which returns that code."""

    def __init__(self, url: str, token: Callable[[], str], *,
                 on_frame: Callable[[Frame], None] = lambda frame: None,
                 on_close: Callable[[int | None, str | None], None] = lambda code, why: None,
                 on_connect_error: Callable[[BaseException], None] = lambda err: None,
                 cursor: int | None = None, ack_delay: float | None = 0.0,
                 backoff: tuple[float, float] = (0.05, 1.0),
                 stop_on: frozenset[int] = frozenset()) -> None:
        self.url, self._token = url, token
        self._on_frame, self._on_close = on_frame, on_close
        self._on_connect_error = on_connect_error
        self.cursor = cursor
        self._ack_delay = ack_delay
        self._acked = cursor
        self._ack_timer: asyncio.TimerHandle | None = None
        self._backoff = backoff
        self._stop_on = stop_on
        self.node = ""
        self.connections = 0
        self.close_codes: list[int | None] = []
        self.close_reason: str | None = None  # of the last close
        self.live = asyncio.Event()  # set between welcome and the next close
        self._conn: WebSocketClientConnection | None = None
        self._task: asyncio.Task[int | None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

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

    async def run(self) -> int | None:
        backoff = Backoff(*self._backoff, jitter=True)
        while not self._stopping:
            try:
                self._conn = await connect(self.url)
            except CONNECT_ERRORS as err:
                self._on_connect_error(err)
            else:
                self.connections += 1
                try:
                    await self._session(self._conn)
                    if self.live.is_set():  # it got as far as a session: start over
                        backoff.reset()
                except CONNECT_ERRORS as err:
                    log.debug("client %s: %s", self.url, err)
                self.live.clear()
                code, self.close_reason = self._conn.close_code, self._conn.close_reason
                self.close_codes.append(code)
                self._on_close(code, self.close_reason)
                if code in self._stop_on:
                    return code
            await asyncio.sleep(backoff.next())
        return None

    async def _session(self, conn: WebSocketClientConnection) -> None:
        await conn.write_message(hello_frame(self._token(), self.cursor, batch=True))
        while True:
            message = await conn.read_message()
            if message is None:
                return
            assert isinstance(message, str)
            for frame in parse(message):
                kind = frame.get("type")
                if kind == "welcome":
                    self.node = frame["node"]
                    self.live.set()
                elif kind == "notification":
                    self.cursor = frame["seq"]
                self._on_frame(frame)
            if self._ack_delay == 0:
                self._send_ack()
            elif self._ack_delay is not None and self._ack_timer is None \
                    and self.cursor != self._acked:
                self._ack_timer = asyncio.get_running_loop().call_later(
                    self._ack_delay, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_timer = None
        conn, cursor = self._conn, self.cursor
        if conn is None or cursor is None or cursor == self._acked:
            return
        try:
            conn.write_message(ack_frame(cursor))
            self._acked = cursor
        except WebSocketClosedError:
            pass  # reconnecting: the next session starts from the cursor anyway
