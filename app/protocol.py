"""The WebSocket protocol (docs/protocol.md): client frames in, server frames out, close
codes. Bus payloads are in ``app.bus_payloads``, publish bodies in ``app.publish``.

Pure functions, no I/O. Every parser either returns a typed frame or raises
``ProtocolError(code, message)``; the caller decides whether the error is fatal.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence, Union

from app import models

# Close codes (RFC 6455 private range 4000-4999 for application codes).
CLOSE_GOING_AWAY = 1001  # node shutting down: reconnect elsewhere at once
CLOSE_UNAVAILABLE = 1011  # the database did not answer at the session's start: retry
CLOSE_MALFORMED = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_HELLO_TIMEOUT = 4408
CLOSE_RATE_LIMITED = 4429
CLOSE_SLOW_CONSUMER = 4413  # more than max_pending_bytes waiting to be written
CLOSE_TOO_MANY_CONNECTIONS = 4409  # the user has max_connections_per_user sockets already
CLOSE_NODE_FULL = 4503  # the node has max_connections sockets: reconnect (elsewhere)

MAX_READ_IDS = 1000
MAX_SEQ = 2**63 - 1
MAX_ACK_BYTES = 256
MAX_REF = 2**53 - 1  # a change's ref: any integer a JavaScript number holds exactly
ACK_KEYS = frozenset({"type", "seq"})


class ProtocolError(Exception):
    """A client frame that cannot be accepted; ``code`` is the error frame's ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Hello:
    token: str | None
    last_seq: int | None
    batch: bool = False  # the client takes several messages per frame, one per line


@dataclass(frozen=True)
class Ack:
    seq: int


# Lifecycle changes a client may ask for; each is pushed to every socket of the user.
CHANGE_KINDS = ("read", "unread", "archive", "unarchive")


@dataclass(frozen=True)
class Change:
    """``read`` / ``unread`` / ``archive`` / ``unarchive`` of ``ids``; ``all`` (read only)
    means every row of the user."""

    kind: str
    ids: tuple[int, ...]
    all: bool = False
    ref: int | None = None  # the client's number for it: answered by a "done" frame
    group_key: str | None = None  # read only: every unread row of the group (no ids)


# Preference changes a client may ask for (revision 0012); pushed to every socket of
# the user as a "preferences" frame.
PREFERENCE_KINDS = ("mute", "unmute")
PREFERENCE_KEYS = frozenset({"type", "category"})


@dataclass(frozen=True)
class Preference:
    """``mute`` / ``unmute`` of ``category``."""

    kind: str
    category: str
    ref: int | None = None


@dataclass(frozen=True)
class Ping:
    pass


ClientFrame = Union[Hello, Ack, Change, Preference, Ping]
# The keys of a change frame besides the change itself.
CHANGE_ENVELOPE = frozenset({"type", "ref"})


def is_int(value: Any) -> bool:
    # bool is an int subclass in Python; true/false are not sequence numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _seq(value: Any, field: str) -> int:
    if not is_int(value) or not 0 <= value <= MAX_SEQ:
        raise ProtocolError("malformed", f"{field} must be a non-negative integer")
    return int(value)


def parse_ids(value: Any) -> tuple[int, ...]:
    """Validate a list of notification ids (shared by the WebSocket and HTTP read)."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("malformed", "ids must be a non-empty list of notification ids")
    if len(value) > MAX_READ_IDS:
        raise ProtocolError("malformed", f"ids may hold at most {MAX_READ_IDS} ids")
    for item in value:
        if not is_int(item) or not 1 <= item <= MAX_SEQ:
            raise ProtocolError("malformed", "ids must be positive integers")
    return tuple(value)


def storable(value: str) -> bool:
    """PostgreSQL text takes it: no NUL character, no lone surrogate (the database would
    refuse it as an error of its own, read as 'unavailable', and a client would retry)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_group_key(value: Any) -> str:
    """A group key as the table takes it (``ck_notifications_group_key_length``)."""
    if (not isinstance(value, str) or not 1 <= len(value) <= models.GROUP_KEY_MAX
            or not storable(value)):
        raise ProtocolError("malformed",
                            f"group_key must be a string of 1-{models.GROUP_KEY_MAX} characters")
    return value


def parse_category(value: Any) -> str:
    """A category as the tables take it (``category_length``)."""
    if (not isinstance(value, str) or not 1 <= len(value) <= models.CATEGORY_MAX
            or not storable(value)):
        raise ProtocolError("malformed",
                            f"category must be a string of 1-{models.CATEGORY_MAX} characters")
    return value


def parse_change_request(
    kind: str, frame: Mapping[str, Any], envelope: frozenset[str] = frozenset()
) -> Change:
    """``{"ids": [...]}``, or for ``read`` also ``{"all": true}`` or ``{"group_key":
    "..."}``: exactly one of them, nothing else (besides the ``envelope`` keys, e.g. a
    frame's ``type``)."""
    keys = set(frame) - envelope
    if kind == "read" and keys == {"all"} and frame["all"] is True:
        return Change(kind, ids=(), all=True)
    if kind == "read" and keys == {"group_key"}:
        return Change(kind, ids=(), group_key=parse_group_key(frame["group_key"]))
    wanted = ('give either "ids": [...], "all": true or "group_key": "..."' if kind == "read"
              else 'give "ids": [...]')
    unknown = sorted(keys - ({"ids", "all", "group_key"} if kind == "read" else {"ids", "all"}))
    if unknown:
        raise ProtocolError("malformed", f"unknown field(s) {', '.join(unknown)}"[:200]
                            + f"; {wanted}")
    if keys != {"ids"}:
        raise ProtocolError("malformed", wanted)
    return Change(kind, ids=parse_ids(frame["ids"]))


def json_object(text: str | bytes, code: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or ``ProtocolError(code, ...)``."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ProtocolError(code, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(code, f"{what} must be a JSON object")
    return value


def _ref(ref: Any) -> int:
    if not is_int(ref) or not 0 <= ref <= MAX_REF:
        raise ProtocolError("malformed", f"ref must be an integer from 0 to {MAX_REF}")
    return int(ref)


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse one client text frame. Raises ``ProtocolError`` for anything off-contract."""
    if isinstance(text, bytes):
        raise ProtocolError("malformed", "binary frames are not supported; send JSON text")
    frame = json_object(text, "malformed", "frame")
    kind = frame.get("type")
    if kind == "hello":
        token = frame.get("token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError("malformed", "token must be a string")
        last = frame.get("last_seq")
        batch = frame.get("batch", False)
        if not isinstance(batch, bool):
            raise ProtocolError("malformed", "batch must be true or false")
        return Hello(token=token or None, last_seq=None if last is None else _seq(last, "last_seq"),
                     batch=batch)
    if kind == "ack":
        # Acks come by the hundred: small and exact, or refused (a 60 KB "ack" is not one).
        if len(text) > MAX_ACK_BYTES or frame.keys() != ACK_KEYS:
            raise ProtocolError("malformed", 'an ack is {"type": "ack", "seq": n} and '
                                f"at most {MAX_ACK_BYTES} bytes")
        return Ack(seq=_seq(frame["seq"], "seq"))
    if kind in CHANGE_KINDS:
        change = parse_change_request(kind, frame, CHANGE_ENVELOPE)
        if "ref" not in frame:
            return change
        return dataclasses.replace(change, ref=_ref(frame["ref"]))
    if kind in PREFERENCE_KINDS:
        unknown = sorted(set(frame) - PREFERENCE_KEYS - {"ref"})
        if unknown or "category" not in frame:
            raise ProtocolError("malformed", f'{kind} is {{"type": "{kind}", "category": '
                                '"...", "ref": n}, ref optional')
        ref = _ref(frame["ref"]) if "ref" in frame else None
        return Preference(kind, parse_category(frame["category"]), ref)
    if kind == "ping":
        return Ping()
    raise ProtocolError("malformed", f"unknown frame type {kind!r}"[:200])


def dumps(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def welcome(user: str, node: str, last_seq: int, unread: int,
            muted: Sequence[str] = ()) -> str:
    return dumps(
        {"type": "welcome", "user": user, "node": node, "last_seq": last_seq, "unread": unread,
         "muted": list(muted)}
    )


def preferences(muted: Sequence[str], unread: int) -> str:
    """The push of the user's preferences (after a mute or unmute from anywhere): the
    muted categories, sorted, and the unread count they leave."""
    return dumps({"type": "preferences", "muted": list(muted), "unread": unread})


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z`` suffix, or None."""
    if moment is None:
        return None
    return moment.isoformat().replace("+00:00", "Z")


def changed(kind: str, ids: Sequence[int], unread: int, all_up_to: int | None = None) -> str:
    """The push of a lifecycle change to every socket of the user. A read-all says
    ``"all": true`` and ``"seq"``: every row up to that seq is read (rows that arrived
    later are not)."""
    frame: dict[str, Any] = {"type": kind, "ids": list(ids), "unread": unread}
    if all_up_to is not None:
        frame["all"] = True
        frame["seq"] = all_up_to
    return dumps(frame)


def pong() -> str:
    return '{"type":"pong"}'


def done(ref: int, changed: int) -> str:
    """The answer to a change frame that carried ``ref``: it is applied (``changed`` rows
    changed state; 0 when they already were so), and every socket of the user gets the
    change's push as usual."""
    return dumps({"type": "done", "ref": ref, "changed": changed})


def error(code: str, message: str, ref: int | None = None) -> str:
    """An error frame; ``ref`` names the change frame it answers, when it had one."""
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return dumps(frame)
