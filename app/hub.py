"""This node's live sockets: user → connections, ordered delivery, per-connection cursor.

The hub never talks to the database. Its one delivery rule keeps every guarantee local
and simple. Every frame comes with ``prev``, the seq below it that the fetch proved to
be its predecessor: the fetch started at ``prev`` (or returned the row ``prev``) and,
because per-user seq order is commit order, no row between ``prev`` and ``seq`` exists
or ever will (deleted, expired, or never committed). A connection with cursor ``c`` is
sent a frame only when ``prev <= c < seq``, then its cursor becomes ``seq``. Whoever
fetched the rows (live fan-out, replay, catch-up), and in whatever order those fetches
finish, a client can get neither a duplicate nor a gap among the rows that exist, and a
deleted row never holds it up. Sending is synchronous (it only appends to the socket's
write buffer), so one delivery call is never interleaved with another, and all the
frames one call has for a connection leave in one write.

Backpressure falls out of the same rule: a connection has ``room()`` for so many more
bytes in its write buffer; when a delivery would pass that, delivery to it simply stops
there and the connection is told to ``pause()``; once its buffer drains it asks the node
for a fetch from its cursor. A replay of thousands of rows therefore never piles up in
memory, and a client that never drains is closed by its own stall timer.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Protocol, Sequence

log = logging.getLogger(__name__)


class Frame(NamedTuple):
    """A notification frame ready to send: ``(prev, seq, text)``; see the module doc."""

    prev: int
    seq: int
    text: str


class ClientGone(Exception):
    """The client's socket closed while we were writing to it."""


class Client(Protocol):
    """What the hub needs from a connection (app.connection.Connection implements it).
    The hub writes ``cursor``, ``held`` and ``admitted``; nobody else does."""

    user: str
    cursor: int  # highest seq this connection has been sent
    # While its session's replay runs, pushes wait here (None: not replaying): a change
    # pushed at once could reach the client before the replay's older copy of the row.
    held: list[str] | None
    admitted: bool  # holds one of the node's session places (``Hub.join``)
    # The muted categories this connection was last told (welcome or preferences frame);
    # set by the dispatcher before ``start``, then by ``push_preferences``.
    muted: tuple[str, ...]

    def send(self, texts: Sequence[str]) -> None:
        """Queue ``texts``, one message each, in one write; raise ``ClientGone`` if the
        socket is closed."""

    def room(self) -> int:
        """How many more bytes may be queued before delivery should pause (<= 0: none,
        the write buffer is above its high-water mark or delivery is paused)."""

    def pause(self) -> None:
        """Delivery stopped for backpressure: resume (fetch from the cursor) once drained."""

    def close(self, code: int, reason: str) -> None: ...


class Waiting(Protocol):
    """A socket that has not said hello yet (the WebSocket handler implements it)."""

    def evict(self) -> None:
        """Close it (4408): it waited for its hello while newer sockets came."""


class Hub:
    """This node's registry of sockets, and admission to it: at most ``max_sockets``
    sessions (sockets that said hello) and ``max_per_user`` per user. Sockets still
    waiting for their hello never count against those: they have caps of their own,
    ``max_waiting`` in all and ``max_waiting_per_ip`` from one address, and beyond a cap
    the oldest waiting socket (of all, or of that address) is closed. A client sends its
    hello as soon as the socket opens, so the oldest waiting ones are those that never
    will: idle sockets can neither lock real users out nor pile up."""

    def __init__(self, max_sockets: int = 20_000, max_per_user: int = 20,
                 max_waiting: int = 2_000, max_waiting_per_ip: int = 1_000) -> None:
        self._by_user: dict[str, set[Client]] = {}
        self._max_sockets = max_sockets
        self._max_per_user = max_per_user
        self._max_waiting = max_waiting
        self._max_waiting_per_ip = max_waiting_per_ip
        self._admitted: dict[str, int] = {}  # user -> sessions admitted and not released
        self.sessions = 0  # the sum of _admitted
        # Sockets waiting for their hello, oldest first (dicts keep insertion order).
        self._waiting: dict[Waiting, str] = {}
        self._waiting_by_ip: dict[str, dict[Waiting, None]] = {}
        # The node is shutting down: no new socket (the load balancer sends it elsewhere).
        self.draining = False
        # Told when a user gets a first registered connection here, and loses its last
        # (the bus listens to the shards of local users: app/server.py wires them).
        self.on_first: Callable[[str], None] = _nothing
        self.on_last: Callable[[str], None] = _nothing

    # --- admission ----------------------------------------------------------------------

    def open_socket(self, socket: Waiting, ip: str) -> bool:
        """Take a new socket as waiting for its hello; False (taking nothing) when the
        node already holds ``max_sockets`` sessions. May evict older waiting sockets."""
        if self.sessions >= self._max_sockets:
            return False
        self._waiting[socket] = ip
        same_ip = self._waiting_by_ip.setdefault(ip, {})
        same_ip[socket] = None
        if len(same_ip) > self._max_waiting_per_ip:
            self._evict(next(iter(same_ip)))
        if len(self._waiting) > self._max_waiting:
            self._evict(next(iter(self._waiting)))
        return True

    def waiting(self) -> int:
        return len(self._waiting)

    def stop_waiting(self, socket: Waiting) -> None:
        """The socket said hello, or closed: it no longer counts as waiting."""
        ip = self._waiting.pop(socket, None)
        if ip is None:
            return
        same_ip = self._waiting_by_ip[ip]
        del same_ip[socket]
        if not same_ip:
            del self._waiting_by_ip[ip]

    def _evict(self, socket: Waiting) -> None:
        self.stop_waiting(socket)
        socket.evict()

    def join(self, client: Client) -> str | None:
        """Admit a session that said a valid hello, before it starts (so that hellos
        racing each other cannot pass the limits together): None when admitted (it holds
        a place until ``leave``), otherwise why not, taking nothing: ``"node_full"`` or
        ``"user_connections"``. Deliveries reach it only once it ``start``s."""
        if client.admitted:
            return None
        if self.sessions >= self._max_sockets:
            return "node_full"
        admitted = self._admitted.get(client.user, 0)
        if admitted >= self._max_per_user:
            return "user_connections"
        self._admitted[client.user] = admitted + 1
        self.sessions += 1
        client.admitted = True
        return None

    def leave(self, client: Client) -> None:
        """The session ended (or never started): no more deliveries, and its place is
        free. Safe to call more than once."""
        self.remove(client)
        if not client.admitted:
            return
        client.admitted = False
        self.sessions -= 1
        admitted = self._admitted.get(client.user, 0) - 1
        if admitted > 0:
            self._admitted[client.user] = admitted
        else:
            self._admitted.pop(client.user, None)

    # --- registry -----------------------------------------------------------------------

    def add(self, client: Client) -> None:
        clients = self._by_user.get(client.user)
        if clients is None:
            clients = self._by_user[client.user] = set()
            self.on_first(client.user)
        clients.add(client)

    def start(self, client: Client, cursor: int, welcome: str) -> None:
        """An admitted session starts: its cursor is where its replay begins, ``welcome`` goes out
        first, pushes wait for the replay (``release_held``), and from now on the bus's
        deliveries reach it. Raises ``ClientGone`` (registering nothing) if it closed."""
        client.cursor = cursor
        client.send((welcome,))
        client.held = []
        self.add(client)

    def remove(self, client: Client) -> None:
        clients = self._by_user.get(client.user)
        if clients is None:
            return
        clients.discard(client)
        if not clients:
            del self._by_user[client.user]
            self.on_last(client.user)

    def users(self) -> list[str]:
        return list(self._by_user)

    def has(self, user: str) -> bool:
        """Whether ``user`` has a connection here."""
        return user in self._by_user

    def clients(self, user: str) -> list[Client]:
        return list(self._by_user.get(user, ()))

    def count(self) -> int:
        return sum(len(c) for c in self._by_user.values())

    def cursor_floor(self, user: str, ready_only: bool = False) -> int | None:
        """The lowest cursor among ``user``'s connections (where a fetch must start);
        with ``ready_only``, among those not paused for backpressure — rows for a paused
        connection would only be fetched to be dropped, and it asks again when drained."""
        cursors = [c.cursor for c in self._by_user.get(user, ())
                   if not ready_only or c.room() > 0]
        return min(cursors) if cursors else None

    def deliver_to(self, client: Client, frames: Sequence[Frame]) -> list[int]:
        """Send ``client`` the frames that continue its cursor; return the seqs sent.

        ``frames`` are in ascending seq order. Frames at or below the cursor were already
        sent; a frame whose ``prev`` is above the cursor would open a gap (this fetch
        says nothing about the rows in between), so delivery stops there and a later
        fetch, which always starts at the cursor, fills it in.
        """
        sent: list[int] = []
        texts: list[str] = []
        cursor = client.cursor
        room = client.room()
        for prev, seq, text in frames:
            if seq <= cursor:
                continue
            if prev > cursor:
                break
            if room <= 0:
                client.pause()
                break
            texts.append(text)
            room -= len(text)
            cursor = seq
            sent.append(seq)
        if not texts:
            return sent
        try:
            client.send(texts)
        except ClientGone:
            self.remove(client)
            return []
        client.cursor = cursor
        if client.room() <= 0:
            # Past the mark with this very write: pause now, or no later round would (a
            # connection without room is left out of the fetches) and it would never be
            # asked to resume.
            client.pause()
        return sent

    def deliver(self, user: str, frames: Sequence[Frame]) -> list[int]:
        """``deliver_to`` every connection of ``user``; return all seqs sent."""
        sent: list[int] = []
        for client in self.clients(user):
            sent.extend(self.deliver_to(client, frames))
        return sent

    def broadcast(self, user: str, text: str) -> int:
        """Send ``text`` to every connection of ``user`` (to a replaying one, once its
        replay is written); return how many got or will get it."""
        count = 0
        for client in self.clients(user):
            if client.held is not None:
                client.held.append(text)
                count += 1
                continue
            try:
                client.send((text,))
                count += 1
            except ClientGone:
                self.remove(client)
        return count

    def preferences_differ(self, user: str, muted: tuple[str, ...]) -> bool:
        """Whether some connection of ``user`` was last told other muted categories."""
        return any(client.muted != muted for client in self.clients(user))

    def push_preferences(self, user: str, muted: tuple[str, ...], text: str) -> int:
        """Send the preferences frame ``text`` to each connection of ``user`` that was last
        told other muted categories than ``muted`` (a replaying one once its replay is
        written); return how many."""
        count = 0
        for client in self.clients(user):
            if client.muted == muted:
                continue
            client.muted = muted
            count += 1
            if client.held is not None:
                client.held.append(text)
                continue
            try:
                client.send((text,))
            except ClientGone:
                self.remove(client)
        return count

    def release_held(self, client: Client) -> None:
        """The client's replay is written: send what was pushed meanwhile, in order."""
        held, client.held = client.held, None
        if held:
            try:
                client.send(held)
            except ClientGone:
                self.remove(client)

    def close_all(self, code: int, reason: str) -> None:
        for client in self.all_clients():
            client.close(code, reason)

    def all_clients(self) -> list[Client]:
        return [c for clients in self._by_user.values() for c in clients]


def _nothing(user: str) -> None:
    pass
