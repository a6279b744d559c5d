"""One client session's state, in one object the hub owns: what it was sent (``cursor``),
pushes waiting for its replay (``held``), backpressure (``room``/``pause``), its rate
budgets and its keepalive fields. Implements ``app.hub.Client`` and
``app.keepalive.Kept``.

Who writes what: the hub moves ``cursor`` and ``held`` (app/hub.py); the connection
itself keeps its pause timer, budgets and liveness; the WebSocket handler only reports
what its socket saw (``ponged``, ``closing``). The node reads, never writes.

The bytes go out through app/transport.py, past Tornado's ``write_message`` (see there).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Protocol, Sequence

import tornado.iostream
import tornado.websocket

from app import protocol, transport
from app.hub import ClientGone
from app.ratelimit import TokenBucket


class Socket(Protocol):
    """What a connection needs from its WebSocket handler: ways to end it."""

    def close(self, code: int, reason: str) -> None: ...

    def fail(self, code: str, message: str, close_code: int) -> None:
        """Send an error frame, then close with ``close_code``."""

    def slow_consumer(self) -> None:
        """Close it: it held more unsent data than allowed, or drained none in time."""

    def close_dead(self) -> None:
        """Close it: a ping went unanswered for the pong timeout."""

    def ping(self, data: bytes) -> None:
        """Send a WebSocket ping (raises ``WebSocketClosedError`` once closed)."""


class Limits(Protocol):
    """The settings a connection applies (app.config.Config has them all)."""

    @property
    def ack_rate(self) -> float: ...

    @property
    def ack_burst(self) -> int: ...

    @property
    def max_pending_bytes(self) -> int: ...

    @property
    def slow_consumer_timeout(self) -> float: ...


class Connection:
    """A session that said a valid hello. ``frames`` is the budget of client frames the
    socket has had since it opened (handed over from before the hello)."""

    # Slots: ten thousand of these live on a busy node.
    __slots__ = ("user", "conn_id", "cursor", "held", "muted", "acked", "expires_at", "last_pong",
                 "ping_sent_at", "frames", "admitted", "_socket", "_wire", "_batch",
                 "_idle_acks", "_max_pending", "_half_pending", "_stall_timeout",
                 "_on_drained", "_last_write", "_paused", "_closing")

    def __init__(self, socket: Socket, wire: tornado.websocket.WebSocketProtocol, user: str,
                 conn_id: str, *, batch: bool, expires_at: float, frames: TokenBucket,
                 limits: Limits, on_drained: Callable[[Connection], None]) -> None:
        self.user = user
        self.conn_id = conn_id
        self.cursor = 0  # the highest seq this connection has been sent (app/hub.py)
        # While its session's replay runs, pushes wait here (None: not replaying): a
        # change pushed at once could reach the client before the replay's older copy.
        self.held: list[str] | None = None
        self.muted: tuple[str, ...] = ()  # as last sent (app/hub.py, push_preferences)
        self.acked = 0  # the highest seq this socket acked (never above its cursor)
        self.expires_at = expires_at  # the token's exp; app.keepalive closes us then
        self.last_pong = time.monotonic()  # the hello counts as a sign of life
        self.ping_sent_at = 0.0  # app.keepalive: the last ping, answered or not
        self.frames = frames
        self.admitted = False  # holds one of the hub's session places (app.hub.join)
        self._socket = socket
        self._wire = wire
        self._batch = batch  # the client takes several messages per frame (hello "batch")
        # Acks that acknowledge nothing new (a flood of them cost a core) have a budget of
        # their own; an ack of rows newly sent is always taken: it costs no more than
        # the rows did.
        self._idle_acks = TokenBucket(limits.ack_rate, limits.ack_burst)
        self._max_pending = limits.max_pending_bytes
        self._half_pending = limits.max_pending_bytes // 2
        self._stall_timeout = limits.slow_consumer_timeout
        self._on_drained = on_drained
        self._last_write: asyncio.Future[None] | None = None
        self._paused: asyncio.TimerHandle | None = None
        self._closing = False

    # --- app.hub.Client -----------------------------------------------------------------

    def send(self, texts: Sequence[str]) -> None:
        """Queue ``texts`` (one message each) in one write to the socket. Raises
        ``ClientGone`` if the socket is closed, or was just closed for holding more than
        ``max_pending_bytes`` unsent (the hub stops delivering at half of that, so only
        frames outside the cursor flow — pongs, pushes — or a client that stopped reading
        can get here). A client that said ``"batch": true`` gets several messages per
        WebSocket frame, one JSON object per line."""
        wire = self._wire
        if self._closing or wire.is_closing():
            raise ClientGone()
        stream = getattr(wire, "stream", None)
        if stream is None:
            raise ClientGone()
        try:
            future = transport.write(stream, transport.encode_frames(texts, self._batch))
        except tornado.iostream.StreamClosedError:
            raise ClientGone() from None
        if future is not None:  # None: all sent at once
            self._last_write = future
        if transport.pending_bytes(stream) > self._max_pending:
            self._socket.slow_consumer()
            raise ClientGone()

    def room(self) -> int:
        if self._paused is not None:
            return 0
        return self._half_pending - transport.pending_bytes(getattr(self._wire, "stream", None))

    def pause(self) -> None:
        """Wait for the write buffer to drain, then ask for the rest from the cursor; a
        client that drains nothing for ``slow_consumer_timeout`` seconds is closed. With
        nothing queued (every write went out whole) the rest is asked for at once."""
        if self._paused is not None:
            return
        loop = asyncio.get_running_loop()
        self._paused = loop.call_later(self._stall_timeout, self._socket.slow_consumer)
        last = self._last_write
        if last is None or transport.pending_bytes(getattr(self._wire, "stream", None)) == 0:
            loop.call_soon(self._drained, None)
        else:
            last.add_done_callback(self._drained)

    def _drained(self, future: asyncio.Future[None] | None) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if not self._closing:
            self._on_drained(self)

    def close(self, code: int, reason: str) -> None:
        self._socket.close(code, reason)

    # --- what the client said -------------------------------------------------------------

    def take_ack(self, seq: int) -> int | None:
        """An ack of ``seq``: the new high-water mark to write (never above what was
        sent), or None when it acknowledges nothing new. Raises ``OverBudget`` when
        such idle acks come faster than their budget allows."""
        up_to = min(seq, self.cursor)
        if up_to > self.acked:
            self.acked = up_to
            return up_to
        if not self._idle_acks.take():
            raise OverBudget()
        return None

    def ponged(self) -> None:
        self.last_pong = time.monotonic()

    def closing(self) -> None:
        """The socket is closing: nothing more is sent, and a pending pause is dropped."""
        self._closing = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None

    # --- app.keepalive.Kept ---------------------------------------------------------------

    def expire(self) -> None:
        self.expires_at = float("inf")  # once
        self._socket.fail("token_expired", "token expired; reconnect with a fresh token",
                          protocol.CLOSE_UNAUTHORIZED)

    def ping_now(self) -> None:
        if self._closing or self._wire.is_closing():
            return
        try:
            self._socket.ping(b"")
        except tornado.websocket.WebSocketClosedError:
            return
        # Unanswered pings do not push the deadline back: only the first counts.
        if self.last_pong >= self.ping_sent_at:
            self.ping_sent_at = time.monotonic()

    def close_dead(self) -> None:
        if not self._closing:  # else closed already; the hub lets go once that completes
            self._socket.close_dead()


class OverBudget(Exception):
    """A client frame beyond its rate budget."""

