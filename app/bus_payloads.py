"""What travels on the bus: the NOTIFY payloads the triggers write, strictly parsed.

On the public channel (``herald``) any role may NOTIFY, so a payload is only ever a
pointer or a claim the node checks against the table. On the private channel (revision
0008, named in ``herald_private.bus_key``) each payload carries its notification frame,
MAC'd under the key beside the name (revision 0009): checked, then sent as it stands.
Pure functions, no I/O; every parser returns a typed event or raises ``ProtocolError``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import ClassVar, Union

from app import models
from app.protocol import CHANGE_KINDS, MAX_SEQ, ProtocolError, is_int, json_object


@dataclass(frozen=True)
class NewEvent:
    """Users with new rows, each with the highest new seq (a pointer, not the data)."""

    kind: ClassVar[str] = "new"
    users: dict[str, int]


@dataclass(frozen=True)
class ChangeEvent:
    """Rows of ``user`` changed lifecycle state (``kind`` is one of ``CHANGE_KINDS``) in
    transaction ``xid`` (the rows' ``read_xid`` or ``archive_xid``). A read-all carries no ids but
    ``all_up_to``: the highest seq it marked read."""

    kind: str
    user: str
    ids: tuple[int, ...]
    xid: int
    all_up_to: int | None = None


@dataclass(frozen=True)
class FrameEvent:
    """A single-row insert's notification frame, rendered by its trigger and sent on the
    private channel (revision 0008): ``text`` goes to the sockets as it stands. Its
    predecessor is ``seq - 1`` (app/hub.py); ``created`` is ``created_at`` in epoch
    seconds, for the latency metric."""

    kind: ClassVar[str] = "frame"
    user: str
    seq: int
    created: float
    text: str


@dataclass(frozen=True)
class PrefsEvent:
    """``user``'s muted categories changed (revision 0012's muted_changed() trigger): a
    hint only, the node reads the list from the table and pushes it where it differs
    from what a socket was last sent."""

    kind: ClassVar[str] = "prefs"
    user: str


@dataclass(frozen=True)
class SyncEvent:
    """A new relay leads: re-read the table for every connected user (app/relay.py)."""

    kind: ClassVar[str] = "sync"


BusEvent = Union[NewEvent, ChangeEvent, PrefsEvent, SyncEvent]


def parse_bus_event(payload: str) -> BusEvent:
    """Strictly parse a NOTIFY payload. Any database role can NOTIFY on any channel, so a
    payload is only ever a hint: rows are re-read from the table before anything is sent.
    Raises ``ProtocolError`` for anything the triggers would not have written."""
    event = json_object(payload, "bad_bus_payload", "payload")
    kind = event.get("k")
    if kind == "new":
        users = event.get("u")
        if not isinstance(users, dict) or not users:
            raise ProtocolError("bad_bus_payload", "new: u must be a non-empty object")
        for user, seq in users.items():
            if not models.is_user_id(user) or not is_int(seq) or not 1 <= seq <= MAX_SEQ:
                raise ProtocolError("bad_bus_payload", "new: bad user or seq")
        return NewEvent(users=dict(users))
    if kind in CHANGE_KINDS:
        user = event.get("u")
        if not models.is_user_id(user):
            raise ProtocolError("bad_bus_payload", f"{kind}: bad user")
        xid = event.get("x")
        if not isinstance(xid, int) or isinstance(xid, bool) or not 1 <= xid <= MAX_SEQ:
            raise ProtocolError("bad_bus_payload", f"{kind}: bad x")
        if kind == "read" and set(event) == {"k", "u", "all", "seq", "x"} and event["all"] is True:
            seq = event["seq"]
            if not is_int(seq) or not 1 <= seq <= MAX_SEQ:
                raise ProtocolError("bad_bus_payload", "read: bad seq")
            return ChangeEvent(kind, user, ids=(), xid=xid, all_up_to=seq)
        ids = event.get("ids")
        if (set(event) != {"k", "u", "ids", "x"} or not isinstance(ids, list) or not ids
                or not all(is_int(i) and 1 <= i <= MAX_SEQ for i in ids)):
            raise ProtocolError("bad_bus_payload", f"{kind}: bad ids")
        return ChangeEvent(kind, user, ids=tuple(ids), xid=xid)
    if kind == "prefs":
        user = event.get("u")
        if set(event) != {"k", "u"} or not models.is_user_id(user):
            raise ProtocolError("bad_bus_payload", "prefs: bad user or fields")
        return PrefsEvent(user)
    if kind == "sync" and len(event) == 1:
        return SyncEvent()
    raise ProtocolError("bad_bus_payload", "unknown kind")


FRAME_EVENT_KEYS = frozenset({"k", "u", "s", "t", "f"})
# The fields of a notification frame (docs/protocol.md), as the trigger renders them.
NOTIFICATION_KEYS = frozenset({"type", "id", "seq", "title", "body", "data", "link",
                               "category", "group_key", "created_at", "expires_at", "read",
                               "archived"})
# Revision 0009: every private-channel payload starts with the HMAC-SHA256 of the rest,
# in hex, under herald_private.bus_key.mac_key; the rest starts as json_build_object
# writes it.
MAC_HEX = 64
FRAME_EVENT_PREFIX = '{"k" : "frame", "u" : '
_decoder = json.JSONDecoder()


def frame_event_user(payload: str) -> str | None:
    """The user a private-channel payload is for, read without checking or parsing the
    frame it carries (most payloads are for other nodes' users); None if it does not
    look as the trigger writes it (``parse_frame_event`` then says what is wrong)."""
    if not payload.startswith(FRAME_EVENT_PREFIX, MAC_HEX):
        return None
    try:
        user, _ = _decoder.raw_decode(payload, MAC_HEX + len(FRAME_EVENT_PREFIX))
    except ValueError:
        return None
    return user if isinstance(user, str) else None


def frame_mac(key: bytes, body: str) -> str:
    """The MAC the trigger puts before ``body`` (hex HMAC-SHA256)."""
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def parse_frame_event(payload: str, key: bytes) -> FrameEvent:
    """Check and parse a payload of the private channel: its MAC under ``key``, then the
    envelope, then the frame itself: a notification frame with exactly the trigger's
    fields, for the envelope's seq, with a link the table would accept. Nothing is
    taken on trust, not even from roles that know the channel's name. Raises
    ``ProtocolError`` naming the first thing wrong (``frame_event_pointer`` then says
    which row to fetch instead)."""
    body = payload[MAC_HEX:]
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError).
    if not hmac.compare_digest(payload[:MAC_HEX].encode(), frame_mac(key, body).encode()):
        raise ProtocolError("bad_bus_payload", "frame: bad MAC")
    event = json_object(body, "bad_bus_payload", "payload")
    user, seq, created, text = event.get("u"), event.get("s"), event.get("t"), event.get("f")
    if not (event.keys() == FRAME_EVENT_KEYS and event["k"] == "frame"
            and models.is_user_id(user) and isinstance(seq, int) and is_int(seq)
            and 1 <= seq <= MAX_SEQ and isinstance(created, (int, float))
            and not isinstance(created, bool) and isinstance(text, str) and text):
        raise ProtocolError("bad_bus_payload", "frame: bad fields")
    frame = json_object(text, "bad_bus_payload", "frame")
    link = frame.get("link")
    if (frame.keys() != NOTIFICATION_KEYS or frame["type"] != "notification"
            or not is_int(frame["seq"]) or frame["seq"] != seq
            or not (link is None or models.is_link(link))):
        raise ProtocolError("bad_bus_payload", "frame: not this row's notification frame")
    return FrameEvent(user, seq, float(created), text)


def frame_event_pointer(payload: str) -> NewEvent | None:
    """What a private-channel payload that failed its checks still says: a pointer to
    its row (a hint, like any pointer: the node fetches from its cursor), or None."""
    try:
        event = _decoder.decode(payload[MAC_HEX:])
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    user, seq = event.get("u"), event.get("s")
    if models.is_user_id(user) and isinstance(seq, int) and is_int(seq) and 1 <= seq <= MAX_SEQ:
        return NewEvent(users={user: seq})
    return None
