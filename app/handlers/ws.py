"""``/ws``: the WebSocket protocol (docs/protocol.md), one handler instance per connection.

Lifecycle: open → (hello within ``hello_timeout``) → welcome + replay → live frames.
Tornado delivers the next message only after a coroutine ``on_message`` returns, so a
connection's frames are handled strictly in order.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Awaitable

import tornado.httputil
import tornado.iostream
import tornado.websocket

from app import auth, models, protocol, shards
from app.config import Config
from app.connection import Connection, OverBudget
from app.dispatch import Dispatcher
from app.errors import DB_ERRORS
from app.hub import ClientGone, Hub
from app.metrics import Metrics
from app.ratelimit import TokenBucket
from app.store import TooManyMuted

log = logging.getLogger(__name__)


class SocketHandler(tornado.websocket.WebSocketHandler):
    """A client's WebSocket: the handshake, the hello, the client's frames. Once the
    hello is valid its session state lives in an ``app.connection.Connection`` that the
    hub admits and owns; this handler is that connection's ``Socket``."""

    # Slots keep our state out of the instance dict: Tornado puts 27 attributes there,
    # and past 30 a dict stops sharing its keys with the other instances (1.3 KB/socket).
    __slots__ = ("dispatcher", "hub", "config", "metrics", "conn_id", "conn", "_hello_timer",
                 "_cookie_token", "_frames", "_waiting", "_closing")

    def initialize(self, dispatcher: Dispatcher, hub: Hub, config: Config,
                   metrics: Metrics) -> None:
        self.dispatcher, self.hub = dispatcher, hub
        self.config, self.metrics = config, metrics
        self.conn_id = uuid.uuid4().hex[:12]
        self.conn: Connection | None = None  # the session, once the hello is valid
        self._hello_timer: asyncio.TimerHandle | None = None
        self._cookie_token: str | None = None
        self._frames = TokenBucket(config.frame_rate, config.frame_burst)
        self._waiting = False  # counted by the hub as waiting for its hello
        self._closing = False

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
        if self.conn is None:
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

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """One client frame. Acks and pings, nearly all of a live socket's frames, are
        handled here synchronously: Tornado wraps an awaitable ``on_message`` result in a
        Task per frame (a Future, a loop step, a ``getpid()`` each on Python 3.11), which
        cost about a tenth of a node's CPU per notification. Only the hello and changes,
        which wait on the database, return a coroutine; Tornado reads the next frame only
        once it is done, so a connection's frames are still handled strictly in order."""
        if self._closing:
            return None
        try:
            frame = protocol.parse_client_frame(message)
        except protocol.ProtocolError as err:
            self.metrics.refused.labels("malformed").inc()
            self.fail(err.code, err.message, protocol.CLOSE_MALFORMED)
            return None
        conn = self.conn
        if conn is None:
            if not self._frames.take():
                self._rate_limited("too many frames; slow down")
            elif not isinstance(frame, protocol.Hello):
                self.fail("hello_required", "the first frame must be hello",
                          protocol.CLOSE_MALFORMED)
            else:
                self._stop_waiting()
                return self._hello(frame)
            return None
        if isinstance(frame, protocol.Ack):
            # Acks have their own budget (and the node merges them into one UPDATE per
            # interval for all its connections): a client acks what the server pushes.
            try:
                up_to = conn.take_ack(frame.seq)
            except OverBudget:
                self._rate_limited("too many acks that acknowledge nothing new")
                return None
            if up_to is not None:
                self.dispatcher.ack(conn, up_to)
            return None
        if not conn.frames.take():
            self._rate_limited("too many frames; slow down")
            return None
        if isinstance(frame, protocol.Ping):
            try:
                conn.send((protocol.pong(),))
            except ClientGone:
                pass
            return None
        if isinstance(frame, protocol.Change):
            return self._change(conn, frame)
        if isinstance(frame, protocol.Preference):
            return self._preference(conn, frame)
        self.fail("malformed", "hello was already received", protocol.CLOSE_MALFORMED)
        return None

    async def _change(self, conn: Connection, frame: protocol.Change) -> None:
        """Apply a change; a frame with a ``ref`` is answered with ``done`` once it is
        committed (or an ``unavailable`` error naming the ref): the client keeps it
        queued until then, so a socket that died silently loses nothing."""
        try:
            changed = await self.dispatcher.change(conn.user, frame)
        except DB_ERRORS as err:
            log.warning("ws: %s for %s failed: %s", type(frame).__name__, conn.user, err)
            self._send_quietly(protocol.error("unavailable", "database unavailable; retry",
                                              frame.ref))
            return
        if frame.ref is not None:
            self._send_quietly(protocol.done(frame.ref, changed))

    async def _preference(self, conn: Connection, frame: protocol.Preference) -> None:
        """Mute or unmute, answered like a change; past the limit a non-fatal
        ``too_many_muted`` error (naming the ref) instead."""
        try:
            changed = await self.dispatcher.set_preference(conn.user, frame)
        except TooManyMuted:
            self._send_quietly(protocol.error(
                "too_many_muted", f"at most {models.MUTED_MAX} muted categories; unmute one "
                "first", frame.ref))
            return
        except DB_ERRORS as err:
            log.warning("ws: %s for %s failed: %s", frame.kind, conn.user, err)
            self._send_quietly(protocol.error("unavailable", "database unavailable; retry",
                                              frame.ref))
            return
        if frame.ref is not None:
            self._send_quietly(protocol.done(frame.ref, changed))

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
            claims = await self.config.tokens.check(token)
        except auth.AuthError as err:
            self.metrics.refused.labels("token").inc()
            self.fail("unauthorized", str(err), protocol.CLOSE_UNAUTHORIZED)
            return
        wire = self.ws_connection
        if wire is None:
            return  # closed while the token was checked
        conn = Connection(self, wire, claims.user, self.conn_id, batch=hello.batch,
                          expires_at=claims.expires_at, frames=self._frames,
                          limits=self.config, on_drained=self.dispatcher.resume)
        refused = self.hub.join(conn)
        if refused == "node_full":
            self._node_full()
            return
        if refused is not None:
            self.metrics.refused.labels("user_connections").inc()
            self.fail("too_many_connections",
                      f"at most {self.config.max_connections_per_user} connections per user",
                      protocol.CLOSE_TOO_MANY_CONNECTIONS)
            return
        self.conn = conn
        self._count_routing(conn.user)
        log.info("session start", extra={"user": conn.user, "conn": self.conn_id,
                                         "last_seq": hello.last_seq})
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._closing:  # closed while the token was checked: on_close has run
            self.hub.leave(conn)
            return
        try:
            await self.dispatcher.open_session(conn, hello.last_seq)
        except DB_ERRORS as err:
            log.warning("ws: session start for %s failed: %s", conn.user, err)
            self.fail("unavailable", "database unavailable; reconnect shortly",
                      protocol.CLOSE_UNAVAILABLE)
        except ClientGone:
            self.hub.leave(conn)

    def _count_routing(self, user: str) -> None:
        """Whether the load balancer's key (``?shard=``, app/shards.py) was this user's."""
        key = shards.parse_routing_key(self.get_query_argument("shard", None))
        result = "none" if key is None else "hit" if key == shards.shard_of(user) else "miss"
        self.metrics.routing.labels(result).inc()

    # --- app.connection.Socket ----------------------------------------------------------

    def on_pong(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.ponged()

    def close_dead(self) -> None:
        if self._closing:
            return
        log.info("dead peer", extra={"user": self._user(), "conn": self.conn_id})
        self.metrics.refused.labels("dead_peer").inc()
        self.close(protocol.CLOSE_GOING_AWAY, "ping timed out")

    def slow_consumer(self) -> None:
        self.metrics.refused.labels("slow_consumer").inc()
        log.info("slow consumer", extra={"user": self._user(), "conn": self.conn_id,
                                         "code": protocol.CLOSE_SLOW_CONSUMER})
        self.close(protocol.CLOSE_SLOW_CONSUMER, "slow consumer: too much unsent data")

    def _user(self) -> str | None:
        return self.conn.user if self.conn is not None else None

    def fail(self, code: str, message: str, close_code: int) -> None:
        """Send an error frame, then close with ``close_code``."""
        log.info("session refused" if self.conn is None else "session failed",
                 extra={"user": self._user(), "conn": self.conn_id, "code": close_code,
                        "reason": code})
        self._send_quietly(protocol.error(code, message))
        self.close(close_code, message[:120])

    def _send_quietly(self, text: str) -> None:
        """Before the hello there is no session yet: errors go out through Tornado."""
        try:
            if self.conn is not None:
                self.conn.send((text,))
            elif self.ws_connection is not None and not self.ws_connection.is_closing():
                self.write_message(text)
        except (ClientGone, tornado.websocket.WebSocketClosedError):
            pass

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        self._closing = True
        if self.conn is not None:
            self.conn.closing()
        super().close(code, reason)

    def on_close(self) -> None:
        self._closing = True
        self._stop_waiting()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        conn = self.conn
        if conn is not None:
            conn.closing()
            log.info("session end", extra={"user": conn.user, "conn": self.conn_id,
                                           "code": self.close_code, "cursor": conn.cursor})
            self.hub.leave(conn)


# Shared by every socket once its upgrade is done; nothing writes headers after that.
_NO_HEADERS = tornado.httputil.HTTPHeaders()
