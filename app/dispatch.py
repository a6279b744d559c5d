"""The dispatcher, a node's heart: bus events in, rows fetched, frames handed to the hub.
(Names: a *node* is one ``herald serve`` process, ``app.server.HeraldServer``, named by
``config.node``; the ``Dispatcher`` is the part of it that moves notifications.)

    bus payload ─► parsed; dropped unless a local user's ─► queue ─► one worker task ─►
    frames the bus carried, then one batched fetch per round for whoever is still
    behind ─► hub.deliver (cursor-ordered) ─► sockets

Also here: a client's session start (welcome, then replay from the table) and the
catch-up of every local user after the bus was lost, both through one replay path
(``fetch_and_deliver``). Holds no SQL text (``store`` does)
and no sockets (``hub`` does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence, Union

import asyncpg

from app import bus_payloads, protocol
from app.acks import AckWriter
from app.backoff import Backoff
from app.coalesce import Coalescer
from app.errors import DB_ERRORS
from app.hub import Client, Frame, Hub
from app.metrics import Metrics
from app.store import Preferences, RowState, Store

log = logging.getLogger(__name__)


# --- what the worker's queue carries ------------------------------------------------------


@dataclass(frozen=True)
class CatchUp:
    """LISTEN is (back) in place: re-read the table for every local user. ``since``: the
    xid from which read-state changes may have been announced while nobody listened."""

    since: int | None = None


@dataclass(frozen=True)
class Resume:
    """A connection of ``user`` drained its buffer after a backpressure pause."""

    user: str


@dataclass(frozen=True)
class Retry:
    """Run a round for what the last one failed to do."""


# Bus events arrive parsed; new rows only for users with a socket here.
Event = Union[bus_payloads.BusEvent, bus_payloads.FrameEvent, CatchUp, Resume, Retry]


@dataclass
class Plan:
    """What one round does: fetch for ``replay`` users from their cursors (no latency
    measured); send local users the ``frames`` the bus carried, then fetch for each
    ``wanted`` user any connection still below the announced seq; push ``changes``."""

    replay: set[str] = field(default_factory=set)
    wanted: dict[str, int] = field(default_factory=dict)  # user -> highest seq announced
    frames: list[bus_payloads.FrameEvent] = field(default_factory=list)
    changes: list[bus_payloads.ChangeEvent] = field(default_factory=list)
    # After a bus loss: push the state of rows changed by transactions from this xid on.
    resync_since: int | None = None
    # Users whose muted categories may have changed: read them, push where they differ.
    prefs: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.replay or self.wanted or self.frames or self.changes
                    or self.resync_since is not None or self.prefs)

    def want(self, user: str, seq: int) -> None:
        if seq > self.wanted.get(user, 0):
            self.wanted[user] = seq


def _confirms(change: bus_payloads.ChangeEvent, state: RowState | None) -> bool:
    """Whether the row's current ``state`` is what ``change`` says it became, by that
    very transaction (so a later change, or none at all, makes the event stale)."""
    if state is None or not state.live or state.user_id != change.user:
        return False
    if change.kind in ("read", "unread"):
        return state.read_xid == change.xid and state.read == (change.kind == "read")
    return state.archive_xid == change.xid and state.archived == (change.kind == "archive")


def frames_after(after: int, rows: Iterable[asyncpg.Record]) -> list[Frame]:
    """The frames of one user's rows as fetched from cursor ``after`` (``Store.fetch_after``
    renders them): each row's ``prev`` is the row before it in the fetch, the first
    one's is ``after``."""
    frames = []
    prev = after
    for row in rows:
        seq = row["seq"]
        frames.append(Frame(prev, seq, row["frame"]))
        prev = seq
    return frames


class Dispatcher:
    def __init__(
        self, name: str, store: Store, hub: Hub, metrics: Metrics, fetch_limit: int = 500,
        ack_interval: float = 0.25,
    ) -> None:
        self.name = name
        self._store = store
        self._hub = hub
        self._metrics = metrics
        self._bus_events: dict[str, Any] = {}  # kind -> its herald_bus_events_total child
        self._fetch_limit = fetch_limit
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._failed = Plan()  # what the last round could not do, for the next one
        self._retry = Backoff(0.1, 5.0)  # before a failed round's retry
        self._acks = AckWriter(store.mark_delivered_many, ack_interval)
        # Sessions starting together share their queries (app/coalesce.py).
        self._session_start = Coalescer(store.session_starts)
        # The bus's interest in users (app/server.py sets it to app.shards.UserShards):
        # a session's first read of the table comes after its user's LISTEN.
        self.interest: Interest = _EVERY_USER
        self._replay = Coalescer(self._replay_users)

    # --- bus side ---------------------------------------------------------------------

    def enqueue(self, payload: str, key: bytes | None = None) -> None:
        """The bus callback (``key``: the payload came on the private channel, and its
        MAC must verify under this key, app/bus.py): parse it, and queue it for the
        worker only if it concerns a user with a socket here. Every node hears every
        NOTIFY and most concern other nodes' users; dropping those here spares the worker
        a wake-up each. Dropping a new row's event is safe at any moment: a session that
        starts later reads the table after it joins the hub, and the NOTIFY came after
        its transaction committed."""
        if key is not None:
            user = bus_payloads.frame_event_user(payload)
            if user is not None and not self._hub.has(user):
                self._count("frame")
                return
        event: bus_payloads.BusEvent | bus_payloads.FrameEvent
        try:
            event = (bus_payloads.parse_frame_event(payload, key) if key is not None
                     else bus_payloads.parse_bus_event(payload))
        except protocol.ProtocolError as err:
            self._metrics.refused.labels("bus_payload").inc()
            log.warning("bus: ignored payload (%s): %.200r", err.message, payload)
            # A frame that fails its checks is not sent; its row is fetched instead.
            pointer = bus_payloads.frame_event_pointer(payload) if key is not None else None
            if pointer is None:
                return
            event = pointer
        self._count(event.kind)
        if isinstance(event, bus_payloads.NewEvent):
            if not any(self._hub.has(user) for user in event.users):
                return
        elif isinstance(event, bus_payloads.FrameEvent) and not self._hub.has(event.user):
            return
        # Change events are few, and one for a session that joins the hub meanwhile must
        # still reach it: the worker decides on those, as late as it can.
        self._queue.put_nowait(event)

    def _count(self, kind: str) -> None:
        """One more bus event of ``kind`` in herald_bus_events_total."""
        counter = self._bus_events.get(kind)
        if counter is None:
            counter = self._bus_events[kind] = self._metrics.bus_events.labels(kind)
        counter.inc()

    def on_listening(self, reconnected: bool, since: int | None = None) -> None:
        """LISTEN is (again) in place: read the table for every local user, since NOTIFYs
        sent while it was down are gone for good, and push the read state of rows
        changed by transactions from xid ``since`` on (their announcements may be gone
        too)."""
        if reconnected:
            self._metrics.bus_reconnects.inc()
        self._queue.put_nowait(CatchUp(since))

    async def run(self) -> None:
        """The worker: process queued events in rounds until cancelled."""
        while True:
            events = [await self._queue.get()]
            while not self._queue.empty() and len(events) < 10_000:
                events.append(self._queue.get_nowait())
            await self._round(events)

    async def _round(self, events: Sequence[Event]) -> None:
        plan = self._plan(events)
        if not plan:
            return
        try:
            await self._execute(plan)
            self._retry.reset()
        except Exception as err:
            # The rows are safe in the table and the cursors say where each client is:
            # remember who needs a fetch and try again shortly. Any error (asyncpg also
            # raises non-Postgres errors when a connection dies mid-operation) must not
            # end the worker, or this node would silently stop delivering.
            if isinstance(err, DB_ERRORS):
                log.warning("node: delivery round failed (%s); retrying", type(err).__name__)
            else:
                log.exception("node: delivery round failed unexpectedly; retrying")
            self._failed = Plan(replay=plan.replay | set(plan.wanted), changes=plan.changes,
                                resync_since=plan.resync_since, prefs=plan.prefs)
            asyncio.get_running_loop().call_later(
                self._retry.next(), self._queue.put_nowait, Retry()
            )

    def _plan(self, events: Sequence[Event]) -> Plan:
        """Merge a batch of events into one round's work: users are fetched once per
        round however many pointers named them."""
        plan, self._failed = self._failed, Plan()
        catch_up = False
        for event in events:
            if isinstance(event, CatchUp):
                catch_up = True
                if event.since is not None:
                    plan.resync_since = min(event.since, plan.resync_since or event.since)
            elif isinstance(event, Resume):
                plan.replay.add(event.user)
            elif isinstance(event, bus_payloads.SyncEvent):
                catch_up = True
            elif isinstance(event, bus_payloads.FrameEvent):
                plan.frames.append(event)
                plan.want(event.user, event.seq)
            elif isinstance(event, bus_payloads.NewEvent):
                for user, seq in event.users.items():
                    plan.want(user, seq)
            elif isinstance(event, bus_payloads.ChangeEvent):
                if self._hub.has(event.user):
                    plan.changes.append(event)
            elif isinstance(event, bus_payloads.PrefsEvent):
                if self._hub.has(event.user):
                    plan.prefs.add(event.user)
        if catch_up:
            plan.replay.update(self._hub.users())
            # A mute announced while nobody listened: compared, pushed only if it differs.
            plan.prefs.update(self._hub.users())
        return plan

    async def _execute(self, plan: Plan) -> None:
        if plan.frames:
            self._deliver_frames(plan.frames)
        # Whoever is still below an announced seq (the frame did not continue its cursor,
        # or only a pointer came) is fetched for, from its cursor.
        live = set()
        for user, seq in plan.wanted.items():
            floor = self._hub.cursor_floor(user)
            if floor is not None and floor < seq and user not in plan.replay:
                live.add(user)
        if plan.replay:
            await self.fetch_and_deliver(plan.replay, self._metrics.replayed)
        if live:
            await self.fetch_and_deliver(live, self._metrics.delivered, latency=True)
        if plan.changes:
            await self._push_changes(plan.changes)
        if plan.resync_since is not None:
            await self._push_state(plan.resync_since)
        if plan.prefs:
            await self._push_preferences(plan.prefs)

    async def _push_preferences(self, users: set[str]) -> None:
        """Read the users' muted categories from the table (a payload only says whom to
        look at: anyone may NOTIFY) and push a preferences frame to each socket that was
        last told something else; the unread count is read only for those users."""
        lists = await self._store.muted_lists(users)
        stale = {user: lists.get(user, ()) for user in users
                 if self._hub.preferences_differ(user, lists.get(user, ()))}
        if not stale:
            return
        counts = await self._store.unread_counts(stale)
        for user, muted in stale.items():
            self._hub.push_preferences(
                user, muted, protocol.preferences(muted, counts.get(user, 0)))

    def _deliver_frames(self, frames: Sequence[bus_payloads.FrameEvent]) -> None:
        """Send the frames the bus carried, in seq order per user. Each row's predecessor
        is ``seq - 1``: a connection whose cursor is lower (a row before it is not yet
        sent) gets nothing here, and the fetch that follows fills it in from its cursor."""
        now = time.time()
        for event in sorted(frames, key=lambda f: (f.user, f.seq)):
            sent = self._hub.deliver(event.user, (Frame(event.seq - 1, event.seq, event.text),))
            self._metrics.delivered.inc(len(sent))
            for _ in sent:
                self._metrics.latency.observe(max(0.0, now - event.created))

    async def _push_state(self, since: int) -> None:
        """After a bus loss: push, as ordinary change frames, the current read and archive
        state of local users' rows changed by transactions from xid ``since`` on."""
        users = self._hub.users()
        changed = await self._store.changed_since(users, since)
        if not changed:
            return
        counts = await self._store.unread_counts({row.user_id for row in changed})
        by_user: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for row in changed:
            kinds = by_user[row.user_id]
            if row.read_changed:
                kinds["read" if row.read else "unread"].append(row.id)
            if row.archive_changed:
                kinds["archive" if row.archived else "unarchive"].append(row.id)
        for user, kinds in by_user.items():
            for kind in protocol.CHANGE_KINDS:
                ids = kinds.get(kind, [])
                for i in range(0, len(ids), protocol.MAX_READ_IDS):
                    self._hub.broadcast(user, protocol.changed(
                        kind, ids[i:i + protocol.MAX_READ_IDS], counts.get(user, 0)))

    async def fetch_and_deliver(
        self, users: set[str], counter: Any, latency: bool = False
    ) -> None:
        """Fetch every row above each user's lowest local cursor and deliver it, page by
        page, until the users are caught up."""
        floors = {u: f for u in users
                  if (f := self._hub.cursor_floor(u, ready_only=True)) is not None}
        while floors:
            rows = await self._store.fetch_after(floors, self._fetch_limit)
            by_user: dict[str, list[asyncpg.Record]] = defaultdict(list)
            for row in rows:
                by_user[row["user_id"]].append(row)
            next_floors: dict[str, int] = {}
            now = time.time()
            for user, user_rows in by_user.items():
                sent = self._hub.deliver(user, frames_after(floors[user], user_rows))
                counter.inc(len(sent))
                if latency and sent:
                    created = {r["seq"]: r["created_at"].timestamp() for r in user_rows}
                    for seq in sent:
                        self._metrics.latency.observe(max(0.0, now - created[seq]))
                floor = self._hub.cursor_floor(user, ready_only=True)
                # A full page means there may be more; continue only if progress was made.
                if len(user_rows) == self._fetch_limit and floor is not None:
                    if floor > floors[user]:
                        next_floors[user] = floor
            floors = next_floors

    async def _push_changes(self, changes: Sequence[bus_payloads.ChangeEvent]) -> None:
        """Push each change to the user's sockets, with the new unread count, but only
        as far as the table confirms it: payloads may be forged, and a change may have
        been overtaken by a later one (then only the later one is pushed)."""
        states = await self._store.states(i for c in changes for i in c.ids)
        claims = [c for c in changes if c.all_up_to is not None]
        checked = await self._store.read_alls(
            [(c.user, c.all_up_to or 0, c.xid) for c in claims])
        read_alls = {id(c): result for c, result in zip(claims, checked, strict=True)}
        counts = await self._store.unread_counts({c.user for c in changes})
        for change in changes:
            unread = counts.get(change.user, 0)
            if change.all_up_to is not None:
                result = read_alls[id(change)]
                if result.holds:
                    frame = protocol.changed("read", (), unread, all_up_to=change.all_up_to)
                elif result.ids:
                    # Some row was marked unread again since: push what is still read.
                    for i in range(0, len(result.ids), protocol.MAX_READ_IDS):
                        self._hub.broadcast(change.user, protocol.changed(
                            "read", result.ids[i:i + protocol.MAX_READ_IDS], unread))
                    continue
                else:
                    continue  # forged, or every row it marked is unread again
            else:
                ids = [i for i in change.ids if _confirms(change, states.get(i))]
                if not ids:
                    continue  # a forged or stale event: nothing it names is so
                frame = protocol.changed(change.kind, ids, unread)
            self._hub.broadcast(change.user, frame)

    # --- client side ------------------------------------------------------------------

    async def open_session(self, client: Client, last_seq: int | None) -> None:
        """Welcome ``client``, register it, and replay what it missed.

        Order matters: the welcome goes first; the client joins the hub *before* the
        replay reads the table, so a row committed at any moment is either in the replay
        or announced by the bus after the client is registered. The hub's cursor rule
        drops whatever both paths deliver. Change pushes for the user wait until the
        replay is written, so none overtakes an older copy of its row.

        The replay is the catch-up's own path (``fetch_and_deliver``), for every user
        whose sessions start together: one fetch per page for all of them.
        """
        # The user's shard is listened to before the first read (the session start's
        # unread count), held by this start until the hub's registration holds it: a
        # row or read-state change committed from then on is either read or announced.
        interest = self.interest
        interest.want(client.user)
        try:
            await interest.ready(client.user)
            start = await self._session_start((client.user, last_seq))
            client.muted = start.muted
            self._hub.start(client, start.baseline, protocol.welcome(
                client.user, self.name, start.last_seq, start.unread, start.muted))
        finally:
            interest.unwant(client.user)
        try:
            await self._replay(client.user)
        finally:
            self._hub.release_held(client)

    async def _replay_users(self, users: Sequence[str]) -> list[None]:
        """Replay, for the sessions starting together, what their users' connections
        miss (a connection paused for backpressure asks for the rest once drained)."""
        await self.fetch_and_deliver(set(users), self._metrics.replayed)
        return [None] * len(users)

    def resume(self, client: Client) -> None:
        """``client`` drained its write buffer after a backpressure pause: fetch from its
        cursor in the next round."""
        self._queue.put_nowait(Resume(client.user))

    def ack(self, client: Client, seq: int) -> None:
        """Mark delivered up to ``seq``, but never past what this connection was sent
        (written in batches, app/acks.py)."""
        self._acks.ack(client.user, min(seq, client.cursor))

    async def flush_acks(self) -> None:
        """Wait until every ack received so far is written (shutdown, tests)."""
        await self._acks.flush()

    async def change(self, user: str, change: protocol.Change) -> int:
        """Apply a lifecycle change (read, unread, archive, unarchive) to ``user``'s rows;
        the trigger's bus event pushes it to every socket of the user on every node.
        Returns the number of rows changed."""
        if change.all:
            return await self._store.mark_all_read(user)
        if change.group_key is not None:
            return await self._store.read_group(user, change.group_key)
        return await self._store.change(user, change.kind, change.ids)

    async def set_preference(self, user: str, preference: protocol.Preference) -> int:
        """Mute or unmute a category for ``user``; the trigger's bus event pushes the new
        list to every socket of the user on every node. Returns 1 if it changed, else 0;
        raises ``store.TooManyMuted`` past ``models.MUTED_MAX`` muted categories."""
        if preference.kind == "mute":
            return await self._store.mute(user, preference.category)
        return await self._store.unmute(user, preference.category)

    async def preferences(self, user: str) -> Preferences:
        return await self._store.preferences(user)

    async def unread(self, user: str) -> int:
        counts: Mapping[str, int] = await self._store.unread_counts([user])
        return counts.get(user, 0)

    def shutdown(self, code: int, reason: str) -> None:
        self._hub.close_all(code, reason)


class Interest(Protocol):
    """The bus's interest in users: ``want``/``unwant`` count a user's holders (the hub
    holds each registered user), ``ready`` returns once the user's announcements reach
    this node (or at once while the bus is down: its reconnect re-reads everything)."""

    def want(self, user: str) -> None: ...

    def unwant(self, user: str) -> None: ...

    async def ready(self, user: str) -> None: ...


class _EveryUser:
    """A bus that hears every user (a dispatcher driven without app/server.py)."""

    def want(self, user: str) -> None:
        pass

    def unwant(self, user: str) -> None:
        pass

    async def ready(self, user: str) -> None:
        pass


_EVERY_USER = _EveryUser()
