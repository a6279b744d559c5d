"""The wire format: client frames in, server frames out, close codes, bus payloads.

Pure functions, no I/O. Every parser either returns a typed frame or raises
``ProtocolError(code, message)``; the caller decides whether the error is fatal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Mapping, Sequence, Union

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


@dataclass(frozen=True)
class Ping:
    pass


ClientFrame = Union[Hello, Ack, Change, Ping]


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; true/false are not sequence numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _seq(value: Any, field: str) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_SEQ:
        raise ProtocolError("malformed", f"{field} must be a non-negative integer")
    return int(value)


def parse_ids(value: Any) -> tuple[int, ...]:
    """Validate a list of notification ids (shared by the WebSocket and HTTP read)."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("malformed", "ids must be a non-empty list of notification ids")
    if len(value) > MAX_READ_IDS:
        raise ProtocolError("malformed", f"ids may hold at most {MAX_READ_IDS} ids")
    for item in value:
        if not _is_int(item) or not 1 <= item <= MAX_SEQ:
            raise ProtocolError("malformed", "ids must be positive integers")
    return tuple(value)


def parse_change_request(
    kind: str, frame: Mapping[str, Any], envelope: frozenset[str] = frozenset()
) -> Change:
    """``{"ids": [...]}``, or for ``read`` also ``{"all": true}``: exactly one of them,
    nothing else (besides the ``envelope`` keys, e.g. a frame's ``type``)."""
    keys = set(frame) - envelope
    if kind == "read" and keys == {"all"} and frame["all"] is True:
        return Change(kind, ids=(), all=True)
    wanted = 'give either "ids": [...] or "all": true' if kind == "read" else 'give "ids": [...]'
    unknown = sorted(keys - {"ids", "all"})
    if unknown:
        raise ProtocolError("malformed", f"unknown field(s) {', '.join(unknown)}"[:200]
                            + f"; {wanted}")
    if keys != {"ids"}:
        raise ProtocolError("malformed", wanted)
    return Change(kind, ids=parse_ids(frame["ids"]))


def _json_object(text: str | bytes, code: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object, or ``ProtocolError(code, ...)``."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise ProtocolError(code, f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(code, f"{what} must be a JSON object")
    return value


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse one client text frame. Raises ``ProtocolError`` for anything off-contract."""
    if isinstance(text, bytes):
        raise ProtocolError("malformed", "binary frames are not supported; send JSON text")
    frame = _json_object(text, "malformed", "frame")
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
        return parse_change_request(kind, frame, frozenset({"type"}))
    if kind == "ping":
        return Ping()
    raise ProtocolError("malformed", f"unknown frame type {kind!r}"[:200])


def _dumps(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def welcome(user: str, node: str, last_seq: int, unread: int) -> str:
    return _dumps(
        {"type": "welcome", "user": user, "node": node, "last_seq": last_seq, "unread": unread}
    )


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
    return _dumps(frame)


def pong() -> str:
    return '{"type":"pong"}'


def error(code: str, message: str) -> str:
    return _dumps({"type": "error", "code": code, "message": message})


# --- bus payloads (written by the triggers in migrations/versions/0001) -------------------


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
class SyncEvent:
    """A new relay leads: re-read the table for every connected user (app/relay.py)."""

    kind: ClassVar[str] = "sync"


BusEvent = Union[NewEvent, ChangeEvent, SyncEvent]


def parse_bus_event(payload: str) -> BusEvent:
    """Strictly parse a NOTIFY payload. Any database role can NOTIFY on any channel, so a
    payload is only ever a hint: rows are re-read from the table before anything is sent.
    Raises ``ProtocolError`` for anything the triggers would not have written."""
    event = _json_object(payload, "bad_bus_payload", "payload")
    kind = event.get("k")
    if kind == "new":
        users = event.get("u")
        if not isinstance(users, dict) or not users:
            raise ProtocolError("bad_bus_payload", "new: u must be a non-empty object")
        for user, seq in users.items():
            if not models.is_user_id(user) or not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
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
            if not _is_int(seq) or not 1 <= seq <= MAX_SEQ:
                raise ProtocolError("bad_bus_payload", "read: bad seq")
            return ChangeEvent(kind, user, ids=(), xid=xid, all_up_to=seq)
        ids = event.get("ids")
        if (set(event) != {"k", "u", "ids", "x"} or not isinstance(ids, list) or not ids
                or not all(_is_int(i) and 1 <= i <= MAX_SEQ for i in ids)):
            raise ProtocolError("bad_bus_payload", f"{kind}: bad ids")
        return ChangeEvent(kind, user, ids=tuple(ids), xid=xid)
    if kind == "sync" and len(event) == 1:
        return SyncEvent()
    raise ProtocolError("bad_bus_payload", "unknown kind")


FRAME_EVENT_KEYS = frozenset({"k", "u", "s", "t", "f"})
# The fields of a notification frame (docs/protocol.md), as the trigger renders them.
NOTIFICATION_KEYS = frozenset({"type", "id", "seq", "title", "body", "data", "link",
                               "category", "created_at", "expires_at", "read", "archived"})
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
    event = _json_object(body, "bad_bus_payload", "payload")
    user, seq, created, text = event.get("u"), event.get("s"), event.get("t"), event.get("f")
    if not (event.keys() == FRAME_EVENT_KEYS and event["k"] == "frame"
            and models.is_user_id(user) and isinstance(seq, int) and _is_int(seq)
            and 1 <= seq <= MAX_SEQ and isinstance(created, (int, float))
            and not isinstance(created, bool) and isinstance(text, str) and text):
        raise ProtocolError("bad_bus_payload", "frame: bad fields")
    frame = _json_object(text, "bad_bus_payload", "frame")
    link = frame.get("link")
    if (frame.keys() != NOTIFICATION_KEYS or frame["type"] != "notification"
            or not _is_int(frame["seq"]) or frame["seq"] != seq
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
    if models.is_user_id(user) and isinstance(seq, int) and _is_int(seq) and 1 <= seq <= MAX_SEQ:
        return NewEvent(users={user: seq})
    return None


# --- HTTP publish body ----------------------------------------------------------------

PUBLISH_FIELDS = frozenset({"user_id", "title", "body", "data", "link", "idempotency_key",
                            "category", "expires_at"})


# The ISO 8601 forms accepted (docs/openapi.yaml has the same pattern): a date, then
# optionally a time to the minute, second or microsecond, then optionally Z or +hh:mm.
TIMESTAMP_PATTERN = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}"
                     r"([.][0-9]{1,6})?)?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?")


def parse_timestamp(value: Any) -> datetime:
    """An ISO 8601 date-time (``Z`` or an offset; none means UTC), as an aware datetime.
    Raises ``ValueError``."""
    if not isinstance(value, str) or not re.fullmatch(TIMESTAMP_PATTERN, value, re.ASCII):
        raise ValueError("not an ISO 8601 date-time")
    text = value
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # fromisoformat before Python 3.11 takes 3 or 6 fractional digits only.
    text = re.sub(r"[.]([0-9]{1,6})", lambda m: "." + m.group(1).ljust(6, "0"), text)
    moment = datetime.fromisoformat(text.replace("t", "T"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _publish_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ProtocolError("invalid_request", f"{where} must be an object")
    unknown = sorted(set(item) - PUBLISH_FIELDS)
    if unknown:
        raise ProtocolError("invalid_request", f"{where}: unknown field(s) {', '.join(unknown)}")
    user = item.get("user_id")
    if not models.is_user_id(user):
        raise ProtocolError("invalid_request", f"{where}.user_id must be {models.USER_ID_RULE}")
    title = item.get("title")
    if not isinstance(title, str) or not 1 <= len(title) <= models.TITLE_MAX:
        raise ProtocolError(
            "invalid_request", f"{where}.title must be a string of 1-{models.TITLE_MAX} chars"
        )
    body = item.get("body")
    if body is not None and (not isinstance(body, str) or len(body) > models.BODY_MAX):
        raise ProtocolError(
            "invalid_request", f"{where}.body must be a string of at most {models.BODY_MAX} chars"
        )
    data = item.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise ProtocolError("invalid_request", f"{where}.data must be a JSON object")
        if len(_dumps(data).encode()) > models.DATA_MAX_BYTES:
            raise ProtocolError(
                "invalid_request", f"{where}.data must be at most {models.DATA_MAX_BYTES} bytes"
            )
    link = item.get("link")
    if link is not None and not models.is_link(link):
        raise ProtocolError(
            "invalid_request",
            f"{where}.link must be {models.LINK_RULE}",
        )
    key = item.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= models.IDEMPOTENCY_KEY_MAX
    ):
        raise ProtocolError(
            "invalid_request",
            f"{where}.idempotency_key must be a string of 1-{models.IDEMPOTENCY_KEY_MAX} chars",
        )
    category = item.get("category")
    if category is not None and (
        not isinstance(category, str) or not 1 <= len(category) <= models.CATEGORY_MAX
    ):
        raise ProtocolError(
            "invalid_request",
            f"{where}.category must be a string of 1-{models.CATEGORY_MAX} chars",
        )
    expires_at = item.get("expires_at")
    if expires_at is not None:
        try:
            expires_at = parse_timestamp(expires_at)
        except (ValueError, OverflowError):
            raise ProtocolError(
                "invalid_request",
                f"{where}.expires_at must be an ISO 8601 date-time, e.g. "
                "2026-12-01T18:00:00Z",
            ) from None
    return {"user_id": user, "title": title, "body": body, "data": data, "link": link,
            "idempotency_key": key, "category": category, "expires_at": expires_at}


def parse_publish(
    body: bytes, max_batch: int, idempotency_key: str | None = None
) -> list[dict[str, Any]]:
    """Validate a publish request body: one object or a non-empty list of at most
    ``max_batch`` objects. The whole body is rejected if any item is invalid.
    ``idempotency_key`` (the ``Idempotency-Key`` header) applies to a single object."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_json", "request body is not valid JSON") from None
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= models.IDEMPOTENCY_KEY_MAX:
        raise ProtocolError("invalid_request", "the Idempotency-Key header must be 1-"
                            f"{models.IDEMPOTENCY_KEY_MAX} characters")
    if isinstance(parsed, dict):
        if idempotency_key is not None:
            if parsed.setdefault("idempotency_key", idempotency_key) != idempotency_key:
                raise ProtocolError("invalid_request", "the Idempotency-Key header and the "
                                    "body's idempotency_key differ")
        return [_publish_item(parsed, "notification")]
    if idempotency_key is not None:
        raise ProtocolError("invalid_request", "the Idempotency-Key header is for a single "
                            "notification; give each list item an idempotency_key")
    if not isinstance(parsed, list) or not parsed:
        raise ProtocolError(
            "invalid_request", "body must be a notification object or a non-empty list of them"
        )
    if len(parsed) > max_batch:
        raise ProtocolError(
            "too_many", f"at most {max_batch} notifications per request (got {len(parsed)})"
        )
    return [_publish_item(item, f"notifications[{i}]") for i, item in enumerate(parsed)]
