"""``/ws``: the WebSocket protocol (docs/protocol.md), one handler instance per connection.

Lifecycle: open → (hello within ``hello_timeout``) → welcome + replay → live frames.
Tornado delivers the next message only after a coroutine ``on_message`` returns, so a
connection's frames are handled strictly in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Sequence

import tornado.httputil
import tornado.iostream
import tornado.websocket

from app import auth, protocol, transport
from app.config import Config
from app.errors import DB_ERRORS
from app.hub import ClientGone, Hub
from app.metrics import Metrics
from app.node import Node
from app.ratelimit import TokenBucket

log = logging.getLogger(__name__)


class SocketHandler(tornado.websocket.WebSocketHandler):
    """A client connection; implements ``app.hub.Client`` (``user``, ``cursor``, ``send``)."""

    # Slots keep our state out of the instance dict: Tornado puts 27 attributes there,
    # and past 30 a dict stops sharing its keys with the other instances (1.3 KB/socket).
    __slots__ = ("node", "hub", "config", "metrics", "conn_id", "user", "cursor",
                 "_hello_timer", "_cookie_token", "expires_at", "last_pong", "ping_sent_at",
                 "_frames", "_idle_acks", "acked", "_waiting", "_registered", "_closing",
                 "_last_write", "_paused", "_batch", "held")

    def initialize(self, node: Node, hub: Hub, config: Config, metrics: Metrics) -> None:
        self.node, self.hub, self.config, self.metrics = node, hub, config, metrics
        self.conn_id = uuid.uuid4().hex[:12]
        self.user: str = ""
        self.cursor = 0
        self._hello_timer: asyncio.TimerHandle | None = None
        self._cookie_token: str | None = None
        self.expires_at = float("inf")  # the token's exp; app.keepalive closes us then
        self.last_pong = 0.0
        self.ping_sent_at = 0.0  # app.keepalive: the last ping, answered or not
        self._frames = TokenBucket(config.frame_rate, config.frame_burst)
        # Acks that acknowledge nothing new (a flood of them cost a core) have a budget of
        # their own; an ack of rows newly sent is always taken: it costs no more than
        # the rows did.
        self._idle_acks = TokenBucket(config.ack_rate, config.ack_burst)
        self.acked = 0  # the highest seq this socket acked (never above its cursor)
        self._waiting = False  # counted by the hub as waiting for its hello
        self._registered = False
        self._closing = False
        self._last_write: "asyncio.Future[None] | None" = None
        self._paused: asyncio.TimerHandle | None = None
        self._batch = False  # the client takes several messages per frame (hello "batch")
        self.held: list[str] | None = None  # pushes waiting for the replay (app.hub)

    # --- handshake ----------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse the upgrade with 503 while the node drains: a client closed with 1001
        reconnects at once, and through a load balancer's kept-alive connection it
        could land right back here; a 503 makes the balancer try another node."""
        if self.hub.draining:
            self.metrics.refused.labels("draining").inc()
            self.set_status(503)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.set_header("Retry-After", "1")
            self.finish('{"error":{"code":"draining","message":"this node is shutting '
                        'down; connect to another one"}}')
            return
        # Tornado's own check passes an origin naming this host with any scheme, and any
        # request saying Sec-Fetch-Site: same-origin: ours is stricter, so it goes first.
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            self.set_status(403)
            self.finish("Cross origin websockets not allowed")
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        """Browsers always send Origin: refuse pages from origins not allowed, so a
        foreign site cannot open a socket riding on the user's login cookie."""
        allowed = auth.origin_allowed(origin, self.request.host, self.config.allowed_origins,
                                      self.request.protocol)
        if not allowed:
            self.metrics.refused.labels("origin").inc()
            log.info("ws: refused origin %r", origin)
        return allowed

    def get_compression_options(self) -> dict[str, Any] | None:
        return None  # per-message deflate costs ~300 KB of zlib state per socket

    def open(self) -> None:
        if not self.hub.open_socket(self, self.request.remote_ip or ""):
            self._node_full()
            return
        self._waiting = True
        loop = asyncio.get_running_loop()
        self._hello_timer = loop.call_later(self.config.hello_timeout, self._hello_timeout)
        self._shed_handshake()

    def _shed_handshake(self) -> None:
        """Drop what only the HTTP upgrade needed (request and response headers are about
        3 KB a socket): keep the login cookie's token for the hello, nothing else."""
        self._cookie_token = self.get_cookie(auth.COOKIE_NAME)
        self.request.headers = _NO_HEADERS
        self._headers = _NO_HEADERS

    def _hello_timeout(self) -> None:
        if not self.user:
            self.metrics.refused.labels("hello_timeout").inc()
            self.fail("hello_timeout", "no hello received in time", protocol.CLOSE_HELLO_TIMEOUT)

    def evict(self) -> None:
        """app.hub.Waiting: too many sockets wait for their hello and this one is the
        oldest (of all, or of its address); the hub has stopped counting it."""
        self._waiting = False
        self.metrics.refused.labels("hello_timeout").inc()
        self.fail("hello_timeout", "no hello received while newer sockets waited",
                  protocol.CLOSE_HELLO_TIMEOUT)

    def _node_full(self) -> None:
        self.metrics.refused.labels("node_full").inc()
        self.fail("node_full", "this node is at its connection limit; try another",
                  protocol.CLOSE_NODE_FULL)

    # --- frames -------------------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        if self._closing:
            return
        try:
            frame = protocol.parse_client_frame(message)
        except protocol.ProtocolError as err:
            self.metrics.refused.labels("malformed").inc()
            self.fail(err.code, err.message, protocol.CLOSE_MALFORMED)
            return
        if not self.user:
            if not self._frames.take():
                self._rate_limited("too many frames; slow down")
            elif not isinstance(frame, protocol.Hello):
                self.fail("hello_required", "the first frame must be hello",
                          protocol.CLOSE_MALFORMED)
            else:
                self._stop_waiting()
                await self._hello(frame)
            return
        if isinstance(frame, protocol.Ack):
            # Acks have their own budget (and the node merges them into one UPDATE per
            # interval for all its connections): a client acks what the server pushes.
            up_to = min(frame.seq, self.cursor)
            if up_to > self.acked:
                self.acked = up_to
                self.node.ack(self, up_to)
            elif not self._idle_acks.take():
                self._rate_limited("too many acks that acknowledge nothing new")
            return
        if not self._frames.take():
            self._rate_limited("too many frames; slow down")
            return
        try:
            if isinstance(frame, protocol.Ping):
                self.send((protocol.pong(),))
            elif isinstance(frame, protocol.Change):
                await self.node.change(self.user, frame)
            else:
                self.fail("malformed", "hello was already received", protocol.CLOSE_MALFORMED)
        except DB_ERRORS as err:
            log.warning("ws: %s for %s failed: %s", type(frame).__name__, self.user, err)
            self._send_quietly(protocol.error("unavailable", "database unavailable; retry"))
        except ClientGone:
            pass

    def _rate_limited(self, message: str) -> None:
        self.metrics.refused.labels("rate_limited").inc()
        self.fail("rate_limited", message, protocol.CLOSE_RATE_LIMITED)

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.hub.stop_waiting(self)

    async def _hello(self, hello: protocol.Hello) -> None:
        token = hello.token or self._cookie_token
        try:
            claims = self.config.tokens.verify(token)
        except auth.AuthError as err:
            self.metrics.refused.labels("token").inc()
            self.fail("unauthorized", str(err), protocol.CLOSE_UNAUTHORIZED)
            return
        refused = self.hub.admit(claims.user)
        if refused == "node_full":
            self._node_full()
            return
        if refused is not None:
            self.metrics.refused.labels("user_connections").inc()
            self.fail("too_many_connections",
                      f"at most {self.config.max_connections_per_user} connections per user",
                      protocol.CLOSE_TOO_MANY_CONNECTIONS)
            return
        self.user = claims.user
        self._batch = hello.batch
        log.info("session start", extra={"user": self.user, "conn": self.conn_id,
                                         "last_seq": hello.last_seq})
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.expires_at = claims.expires_at  # app.keepalive enforces it
        self.last_pong = time.monotonic()
        self._registered = True
        try:
            await self.node.open_session(self, hello.last_seq)
        except DB_ERRORS as err:
            log.warning("ws: session start for %s failed: %s", self.user, err)
            self.fail("unavailable", "database unavailable; reconnect shortly",
                      protocol.CLOSE_UNAVAILABLE)
        except ClientGone:
            self.node.close_session(self)

    # --- app.keepalive.Kept -------------------------------------------------------------

    def expire(self) -> None:
        self.expires_at = float("inf")  # once
        self.fail("token_expired", "token expired; reconnect with a fresh token",
                  protocol.CLOSE_UNAUTHORIZED)

    def ping_now(self) -> None:
        if not self._closing and self.ws_connection is not None:
            try:
                self.ping()
                # Unanswered pings do not push the deadline back: only the first counts.
                if self.last_pong >= self.ping_sent_at:
                    self.ping_sent_at = time.monotonic()
            except tornado.websocket.WebSocketClosedError:
                pass

    def on_pong(self, data: bytes) -> None:
        self.last_pong = time.monotonic()

    def close_dead(self) -> None:
        if self._closing:
            return  # closed already; the hub lets go of it once the close completes
        log.info("dead peer", extra={"user": self.user, "conn": self.conn_id})
        self.metrics.refused.labels("dead_peer").inc()
        self.close(protocol.CLOSE_GOING_AWAY, "ping timed out")

    # --- app.hub.Client -----------------------------------------------------------------

    def send(self, texts: Sequence[str]) -> None:
        """Queue ``texts`` (one message each) in one write to the socket. Raises
        ``ClientGone`` if the socket is closed, or was just closed for holding more than
        ``max_pending_bytes`` unsent (the hub stops delivering at half of that, so only
        frames outside the cursor flow — pongs, pushes — or a client that stopped reading
        can get here).

        Not ``write_message``: that wraps every frame in a Task (~60 µs each, measured in
        tornado#2955) and makes a ``send()`` system call per frame. The frames are built
        here (server frames are unmasked, uncompressed: ``get_compression_options`` is
        None) and written together; a client that said ``"batch": true`` gets several
        messages per WebSocket frame, one JSON object per line."""
        connection = self.ws_connection
        if self._closing or connection is None or connection.is_closing():
            raise ClientGone()
        stream = getattr(connection, "stream", None)
        if stream is None:
            raise ClientGone()
        try:
            future = transport.write(stream, transport.encode_frames(texts, self._batch))
        except tornado.iostream.StreamClosedError:
            raise ClientGone() from None
        self._last_write = future
        if self._pending_bytes() > self.config.max_pending_bytes:
            self._slow_consumer()
            raise ClientGone()

    def room(self) -> int:
        if self._paused is not None:
            return 0
        return self.config.max_pending_bytes // 2 - self._pending_bytes()

    def pause(self) -> None:
        """Wait for the write buffer to drain, then ask for the rest from the cursor; a
        client that drains nothing for ``slow_consumer_timeout`` seconds is closed."""
        if self._paused is not None or self._last_write is None:
            return
        loop = asyncio.get_running_loop()
        self._paused = loop.call_later(self.config.slow_consumer_timeout, self._slow_consumer)
        self._last_write.add_done_callback(self._drained)

    def _drained(self, future: "asyncio.Future[None]") -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if not self._closing:
            self.node.resume(self)

    def _slow_consumer(self) -> None:
        self.metrics.refused.labels("slow_consumer").inc()
        log.info("slow consumer", extra={"user": self.user, "conn": self.conn_id,
                                         "code": protocol.CLOSE_SLOW_CONSUMER})
        self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer: too much unsent data")

    def _pending_bytes(self) -> int:
        return transport.pending_bytes(getattr(self.ws_connection, "stream", None))

    def fail(self, code: str, message: str, close_code: int) -> None:
        """Send an error frame, then close with ``close_code``."""
        log.info("session refused" if not self.user else "session failed",
                 extra={"user": self.user or None, "conn": self.conn_id, "code": close_code,
                        "reason": code})
        self._send_quietly(protocol.error(code, message))
        self.close(close_code, message[:120])

    def _send_quietly(self, text: str) -> None:
        try:
            self.send((text,))
        except ClientGone:
            pass

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self._closing = True
        super().close(code, reason)

    def on_close(self) -> None:
        self._closing = True
        if self._paused is not None:
            self._paused.cancel()
        self._stop_waiting()
        if self.user:
            log.info("session end", extra={"user": self.user, "conn": self.conn_id,
                                           "code": self.close_code, "cursor": self.cursor})
            self.hub.release(self.user)
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._registered:
            self.node.close_session(self)


# Shared by every socket once its upgrade is done; nothing writes headers after that.
_NO_HEADERS = tornado.httputil.HTTPHeaders()
