"""The pure core, without PostgreSQL, sockets or a loop: the hub's delivery rule and
admission, the parsers, the frame encoder, token buckets, trusted proxies, token checks.
The whole file runs in about a second: ``pytest -m unit`` is the fast loop (README,
*Develop*); the rest of the suite proves the same behaviour end to end."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, Sequence

import jwt
import pytest
import tornado.httputil

from app import auth, bus_payloads, models, protocol, tasks
from app.hub import ClientGone, Frame, Hub
from app.proxies import TrustedProxies, parse_networks
from app.ratelimit import KeyedLimiter, TokenBucket, retry_after
from app.transport import BATCH_BYTES, encode_frames
from tests.helpers import ROOT

pytestmark = pytest.mark.unit


class FakeClient:
    """What the hub needs from a socket, recording what it was sent."""

    def __init__(self, user: str = "alice", cursor: int = 0, room: int = 10**9) -> None:
        self.user, self.cursor, self.held, self.admitted = user, cursor, None, False
        self.sent: list[str] = []
        self._room = room
        self.paused = 0
        self.gone = False

    def send(self, texts: Sequence[str]) -> None:
        if self.gone:
            raise ClientGone()
        self.sent.extend(texts)
        self._room -= sum(len(t) for t in texts)

    def room(self) -> int:
        return self._room

    def pause(self) -> None:
        self.paused += 1

    def close(self, code: int, reason: str) -> None:
        self.gone = True


def frames(*seqs: int, prev: int | None = None) -> list[Frame]:
    """Frames for consecutive rows (each one's predecessor is the previous seq)."""
    out, last = [], (seqs[0] - 1 if prev is None else prev)
    for seq in seqs:
        out.append(Frame(last, seq, f"n{seq}"))
        last = seq
    return out


# --- the hub's delivery rule -----------------------------------------------------------


def test_a_frame_continuing_the_cursor_is_sent_and_moves_it() -> None:
    hub, client = Hub(), FakeClient(cursor=3)
    hub.add(client)
    assert hub.deliver("alice", frames(4, 5)) == [4, 5]
    assert (client.sent, client.cursor) == (["n4", "n5"], 5)


def test_frames_at_or_below_the_cursor_are_never_sent_twice() -> None:
    hub, client = Hub(), FakeClient(cursor=5)
    hub.add(client)
    assert hub.deliver("alice", frames(4, 5, 6)) == [6]
    assert client.sent == ["n6"]


def test_a_frame_whose_predecessor_is_above_the_cursor_waits_for_a_fetch() -> None:
    hub, client = Hub(), FakeClient(cursor=3)
    hub.add(client)
    assert hub.deliver("alice", [Frame(4, 5, "n5")]) == []
    assert (client.sent, client.cursor) == ([], 3)


def test_a_deleted_row_never_holds_a_client_up() -> None:
    """The fetch proved nothing lies between 3 and 7 (rows 4-6 are gone)."""
    hub, client = Hub(), FakeClient(cursor=3)
    hub.add(client)
    assert hub.deliver("alice", [Frame(3, 7, "n7")]) == [7]
    assert client.cursor == 7


def test_delivery_stops_where_the_room_ends_and_asks_to_pause() -> None:
    hub, client = Hub(), FakeClient(cursor=0, room=5)  # each frame here is 2 bytes
    hub.add(client)
    assert hub.deliver("alice", frames(1, 2, 3, 4)) == [1, 2, 3]  # room left, then none
    assert client.paused >= 1 and client.cursor == 3  # pause() is idempotent


def test_a_client_that_is_gone_is_dropped_from_the_hub() -> None:
    hub, client = Hub(), FakeClient()
    hub.add(client)
    client.gone = True
    assert hub.deliver("alice", frames(1)) == []
    assert not hub.has("alice")


def test_pushes_wait_for_a_replay_and_follow_it_in_order() -> None:
    hub, client = Hub(), FakeClient()
    hub.add(client)
    client.held = []
    assert hub.broadcast("alice", "read 1") == 1
    assert client.sent == []
    hub.deliver_to(client, frames(1))
    hub.release_held(client)
    assert client.sent == ["n1", "read 1"]


def test_the_cursor_floor_is_the_lowest_ready_cursor() -> None:
    hub = Hub()
    for cursor, room in ((5, 100), (2, 0), (9, 100)):
        hub.add(FakeClient(cursor=cursor, room=room))
    assert hub.cursor_floor("alice") == 2
    assert hub.cursor_floor("alice", ready_only=True) == 5
    assert hub.cursor_floor("bob") is None


# --- admission ---------------------------------------------------------------------------


class Waiter:
    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_sessions_and_sockets_per_user_are_capped() -> None:
    hub = Hub(max_sockets=3, max_per_user=2)
    a1, a2, a3, b, c = (FakeClient(u) for u in ("a", "a", "a", "b", "c"))
    assert [hub.join(a1), hub.join(a2), hub.join(a3)] == [None, None, "user_connections"]
    assert (a1.admitted, a3.admitted) == (True, False)
    assert hub.join(b) is None
    assert hub.join(c) == "node_full"
    hub.leave(a1)
    hub.leave(a1)  # leaving twice frees one place, not two
    assert hub.join(c) is None and hub.sessions == 3
    hub.leave(a3)  # a session never admitted changes nothing
    assert hub.sessions == 3 and hub.join(FakeClient("d")) == "node_full"


def test_a_session_that_leaves_gets_no_more_deliveries() -> None:
    hub, client = Hub(), FakeClient()
    assert hub.join(client) is None
    assert hub.deliver("alice", frames(1)) == []  # admitted, not started: not delivered
    hub.start(client, 0, "welcome")
    assert hub.deliver("alice", frames(1)) == [1]
    hub.leave(client)
    assert not hub.has("alice") and hub.sessions == 0
    assert hub.deliver("alice", frames(2)) == [] and client.sent == ["welcome", "n1"]


def test_waiting_sockets_do_not_count_as_sessions_and_the_oldest_goes() -> None:
    hub = Hub(max_sockets=1, max_waiting=3, max_waiting_per_ip=2)
    waiters = [Waiter() for _ in range(4)]
    assert hub.open_socket(waiters[0], "10.0.0.1")
    assert hub.open_socket(waiters[1], "10.0.0.1")
    assert hub.open_socket(waiters[2], "10.0.0.1")  # a third from one address
    assert [w.evicted for w in waiters[:3]] == [True, False, False]
    assert hub.open_socket(waiters[3], "10.0.0.2")
    assert hub.waiting() == 3
    hub.stop_waiting(waiters[1])
    assert hub.waiting() == 2 and hub.join(FakeClient()) is None
    assert not hub.open_socket(Waiter(), "10.0.0.3")  # full of sessions: refused


def test_across_addresses_the_oldest_waiting_socket_goes() -> None:
    hub = Hub(max_waiting=2, max_waiting_per_ip=10)
    waiters = [Waiter() for _ in range(3)]
    for n, waiter in enumerate(waiters):
        hub.open_socket(waiter, f"10.0.0.{n}")
    assert [w.evicted for w in waiters] == [True, False, False]


# --- client frames -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ('{"type": "hello", "token": "t", "last_seq": 4}', protocol.Hello("t", 4)),
    ('{"type": "hello", "batch": true}', protocol.Hello(None, None, True)),
    ('{"type": "ack", "seq": 7}', protocol.Ack(7)),
    ('{"type": "read", "all": true}', protocol.Change("read", (), True)),
    ('{"type": "archive", "ids": [1, 2]}', protocol.Change("archive", (1, 2))),
    ('{"type": "ping"}', protocol.Ping()),
])
def test_client_frames_parse(text: str, expected: Any) -> None:
    assert protocol.parse_client_frame(text) == expected


@pytest.mark.parametrize("text", [
    b'{"type": "ping"}', "[]", "not json", '{"type": "nope"}', '{"type": "ack"}',
    '{"type": "ack", "seq": -1}', '{"type": "ack", "seq": true}',
    '{"type": "ack", "seq": 1, "x": 1}', '{"type": "ack", "seq": 1' + " " * 300 + "}",
    '{"type": "hello", "token": 5}', '{"type": "hello", "batch": "yes"}',
    '{"type": "read", "ids": []}', '{"type": "read", "ids": [0]}',
    '{"type": "unread", "all": true}', '{"type": "read", "ids": [1], "all": true}',
    "[" * 100_000,
])
def test_off_contract_client_frames_are_refused(text: str | bytes) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_client_frame(text)
    assert err.value.code == "malformed"


# --- bus payloads ------------------------------------------------------------------------

KEY = b"k" * 64


def _payload(user: str, frame: dict[str, Any], key: bytes = KEY, seq: int | None = None) -> str:
    body = json.dumps({"k": "frame", "u": user, "s": frame["seq"] if seq is None else seq,
                       "t": 1.5, "f": json.dumps(frame)})
    return bus_payloads.frame_mac(key, body) + body


FRAME = {"type": "notification", "id": 1, "seq": 3, "title": "t", "body": None, "data": {},
         "link": "/a", "category": None, "group_key": "pr-12",
         "created_at": "2026-12-04T00:00:00Z",
         "expires_at": None, "read": False, "archived": False}


def test_a_frame_with_its_mac_parses() -> None:
    event = bus_payloads.parse_frame_event(_payload("alice", FRAME), KEY)
    assert (event.user, event.seq, event.created) == ("alice", 3, 1.5)
    assert json.loads(event.text) == FRAME


@pytest.mark.parametrize("payload", [
    _payload("alice", FRAME, key=b"x" * 64),
    "0" * 64 + _payload("alice", FRAME)[64:],
    _payload("alice", FRAME)[:64] + _payload("bob", FRAME)[64:],
    _payload("alice", FRAME, seq=4),
    _payload("alice", {**FRAME, "type": "welcome"}),
    _payload("alice", {**FRAME, "extra": 1}),
    _payload("alice", {**FRAME, "link": "javascript:alert(1)"}),
    _payload("alice", {**FRAME, "link": "/..//evil.example"}),
    _payload("", FRAME),
    "short",
    "é" * 64 + _payload("alice", FRAME)[64:],
])
def test_frames_that_fail_a_check_are_refused(payload: str) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        bus_payloads.parse_frame_event(payload, KEY)
    assert err.value.code == "bad_bus_payload"


def test_a_refused_frame_still_points_at_its_row() -> None:
    forged = "0" * 64 + _payload("alice", FRAME)[64:]
    assert bus_payloads.frame_event_pointer(forged) == bus_payloads.NewEvent(users={"alice": 3})
    assert bus_payloads.frame_event_pointer("0" * 64 + "[" * 5000) is None


def test_a_frame_nested_too_deep_for_python_is_refused_not_raised() -> None:
    deep = {**FRAME, "data": json.loads('{"a": ' + "[" * 50 + "]" * 50 + "}")}
    text = json.dumps(deep).replace("[" * 50 + "]" * 50, "[" * 5000 + "]" * 5000)
    body = json.dumps({"k": "frame", "u": "alice", "s": 3, "t": 0, "f": text})
    with pytest.raises(protocol.ProtocolError):
        bus_payloads.parse_frame_event(bus_payloads.frame_mac(KEY, body) + body, KEY)


@pytest.mark.parametrize("payload", [
    '{"k": "new", "u": {}}', '{"k": "new", "u": {"a": 0}}', '{"k": "read", "u": "a"}',
    '{"k": "read", "u": "a", "x": 1, "ids": []}', '{"k": "frame", "u": "a", "s": 1}',
    '{"k": "sync", "extra": 1}', "[]",
])
def test_public_bus_payloads_are_parsed_strictly(payload: str) -> None:
    with pytest.raises(protocol.ProtocolError):
        bus_payloads.parse_bus_event(payload)


# --- frames on the wire ------------------------------------------------------------------


def test_frames_are_rfc6455_text_frames_and_batches_split_by_size() -> None:
    one = encode_frames(["{}"], batch=False)
    assert one == b"\x81\x02{}"
    big = "x" * 70_000
    assert encode_frames([big], batch=False)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")
    texts = ["y" * 40_000, "z" * 40_000]
    batched = encode_frames(texts, batch=True)
    assert batched.count(b"\x81\x7e") == 2 and 40_000 < BATCH_BYTES
    joined = encode_frames(["a", "b"], batch=True)
    assert joined == b"\x81\x03a\nb"


# --- limits ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait() == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.take() and not bucket.take()
    clock.now = 100
    assert sum(bucket.take() for _ in range(10)) == 3


def test_keyed_limiters_are_per_key_and_forget_full_buckets() -> None:
    clock = Clock()
    limiter = KeyedLimiter(rate=1, burst=1, max_keys=2, clock=clock)
    assert limiter.take("a") == 0.0 and limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0
    clock.now = 5
    assert limiter.take("c") == 0.0 and len(limiter) == 1  # a and b were full again
    assert retry_after(0.2) == "1" and retry_after(1.5) == "2"


def _request(peer: str, **headers: str) -> tornado.httputil.HTTPServerRequest:
    request = tornado.httputil.HTTPServerRequest(
        headers=tornado.httputil.HTTPHeaders({"Host": "herald", **headers}),
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"))
    request.remote_ip, request.protocol = peer, "http"
    return request


@pytest.mark.parametrize("peer, headers, ip, scheme", [
    ("127.0.0.1", {"X-Real-IP": "203.0.113.9"}, "203.0.113.9", "http"),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9, 10.1.1.1", "X-Forwarded-Proto": "https"},
     "203.0.113.9", "https"),  # 10.1.1.1 is a trusted proxy too: skipped
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}, "203.0.113.9", "http"),
    ("127.0.0.1", {"X-Forwarded-For": "nonsense", "X-Real-IP": "203.0.113.9"},
     "203.0.113.9", "http"),
    ("127.0.0.1", {"X-Forwarded-Proto": "gopher"}, "127.0.0.1", "http"),
    ("192.0.2.7", {"X-Real-IP": "203.0.113.9", "X-Forwarded-Proto": "https"},
     "192.0.2.7", "http"),  # not a trusted proxy: its headers mean nothing
])
def test_forwarded_headers_count_only_from_trusted_proxies(
    peer: str, headers: dict[str, str], ip: str, scheme: str
) -> None:
    request = _request(peer, **headers)
    TrustedProxies(parse_networks("127.0.0.1, 10.0.0.0/8, ::1")).apply(request)
    assert (request.remote_ip, request.protocol) == (ip, scheme)


def test_trusted_proxies_are_parsed_or_refused_with_the_bad_item() -> None:
    assert len(parse_networks(" 127.0.0.1 , ::1,10.0.0.0/8,")) == 3
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks("127.0.0.1, nope")


# --- tokens, origins, links ------------------------------------------------------------


def _token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", **claims}, "s" * 32, "HS256")


@pytest.mark.parametrize("claims, error", [
    ({"exp": "2000000000"}, "exp must be a number"),
    ({"exp": 1e300}, "exp must be a number"),
    ({"exp": True}, "token expired|exp must be a number"),
    ({"exp": 2_000_000_000, "nbf": "0"}, "nbf must be a number"),
    ({"exp": 2_000_000_000}, "more than 604800 s away"),
    ({"exp": 1}, "expired"),
])
def test_odd_or_far_expiries_are_refused(claims: dict[str, Any], error: str) -> None:
    with pytest.raises(auth.AuthError, match=error):
        auth.verify_token("s" * 32, _token(**claims))


def test_a_token_within_the_lifetime_passes() -> None:
    claims = auth.verify_token("s" * 32, _token(exp=int(time.time()) + 60, iat=0))
    assert claims.user == "alice"


@pytest.mark.parametrize("origin, scheme, allowed", [
    ("http://host:1", "http", True), ("https://host:1", "http", False),
    ("https://host:1", "https", True), ("http://host:1", "https", False),
    ("http://host:1", "ws", True), ("https://host:1", "wss", True),
    ("http://other:1", "http", False), (None, "http", True),
    ("https://shop.example", "http", True),
])
def test_an_origin_must_match_the_host_and_the_scheme(
    origin: str | None, scheme: str, allowed: bool
) -> None:
    assert auth.origin_allowed(origin, "host:1", ("https://shop.example",), scheme) is allowed


@pytest.mark.parametrize("link, ok", [
    ("/orders/1", True), ("https://shop.example/a", True), ("/", True), ("/a.b/c..d", True),
    ("//evil.example", False), ("/\\evil.example", False), ("/..//evil.example", False),
    ("/%2E%2e//evil.example", False), ("/\t/evil.example", False), ("/\u00a0/x", False),
    ("/\u200b/x", False), ("/x\n", False), ("javascript:alert(1)", False),
    ("/" + "a" * 2048, False),
])
def test_the_link_rule(link: str, ok: bool) -> None:
    assert models.is_link(link) is ok


def test_backoff_doubles_up_to_its_maximum_with_or_without_jitter() -> None:
    from app.backoff import Backoff

    plain = Backoff(0.1, 0.5)
    assert [plain.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    plain.reset()
    assert plain.next() == pytest.approx(0.1)
    shaken = Backoff(1.0, 8.0, jitter=True, rand=iter([0.0, 1.0, 0.5]).__next__)
    assert [shaken.next() for _ in range(3)] == pytest.approx([0.5, 3.0, 4.0])


def test_a_session_joins_with_its_cursor_welcome_first_and_pushes_held() -> None:
    hub, client = Hub(), FakeClient(cursor=99)
    hub.start(client, 3, "welcome")
    assert (client.cursor, client.sent, client.held) == (3, ["welcome"], [])
    assert hub.broadcast("alice", "read 4") == 1 and client.sent == ["welcome"]
    hub.deliver_to(client, frames(4))
    hub.release_held(client)
    assert client.sent == ["welcome", "n4", "read 4"]


# --- docs/openapi.yaml says what app/models.py enforces ---------------------------------


def test_openapi_limits_and_link_pattern_are_the_models() -> None:
    """The published schema of a new notification carries the limits and the link rule
    the server applies (a pattern left behind once accepted a backslash)."""
    import re

    import yaml

    spec = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    fields = spec["components"]["schemas"]["NewNotification"]["properties"]
    assert fields["user_id"]["maxLength"] == models.USER_ID_MAX
    assert fields["title"]["maxLength"] == models.TITLE_MAX
    assert fields["body"]["maxLength"] == models.BODY_MAX
    assert fields["link"]["maxLength"] == models.LINK_MAX
    assert fields["idempotency_key"]["maxLength"] == models.IDEMPOTENCY_KEY_MAX
    assert fields["category"]["maxLength"] == models.CATEGORY_MAX
    assert str(models.DATA_MAX_BYTES) in fields["data"]["description"]
    documented = re.compile(fields["link"]["pattern"])  # case-sensitive, as in JSON Schema
    samples = ["https://shop.example/o/1", "HTTP://x.example", "/orders/42?x=1#top", "/",
               "/a/./b", "/a/%2E%2e/b", "/..", "//evil.example", "/\\evil", "/a\\b",
               "https://x.example/a b", "javascript:alert(1)", "/tab\there", "/ok\u00a0",
               "/ok\u2028", "ftp://x.example", "https://", "/%2e", "/.well-known/x", "",
               "relative/path", "/a/..b", "/a/b..", "https://x.example/\ufeff",
               "https://x.example\\@evil.example", "https://x.example/%2e%2e/"]
    for link in samples:
        assert (documented.fullmatch(link) is not None) == models.is_link(link), link


async def test_cancel_ends_a_task_whose_cancellation_was_lost() -> None:
    """Before Python 3.12, asyncio.wait_for loses a cancel that comes in the loop
    iteration where what it awaits finishes, and the task runs on: tasks.cancel (how
    every background task of a node is stopped) cancels it again until it ends."""
    awaited = asyncio.get_running_loop().create_future()
    ran_on = asyncio.Event()

    async def loop_body() -> None:
        await asyncio.wait_for(awaited, 10)
        ran_on.set()  # 3.10 / 3.11: the cancel is gone
        await asyncio.sleep(10)

    task = asyncio.create_task(loop_body())
    await asyncio.sleep(0)  # the task now waits in wait_for
    awaited.set_result(None)  # finished, its wake-up not yet run ...
    started = time.monotonic()
    await asyncio.wait_for(tasks.cancel(task), 5)  # ... when the cancel comes
    assert task.cancelled()
    assert time.monotonic() - started < tasks.RECANCEL_EVERY + 1
    assert ran_on.is_set() == (sys.version_info < (3, 12))
