"""Bad input on the WebSocket: a clear error, the right close code, and the node keeps
serving everyone else."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest

from app import auth
from app.server import HeraldServer
from herald_dev.rawws import stalled_client
from tests.conftest import SECRET, insert, make_config, token_for
from tests.helpers import wait_for


def _forge(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _alg_none(claims: dict) -> str:
    import base64

    def b64(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


FUTURE = int(time.time()) + 3600

BAD_TOKENS = {
    "expired": lambda u: _forge({"sub": u, "exp": int(time.time()) - 10}),
    "wrong key": lambda u: _forge({"sub": u, "exp": FUTURE}, key="not-the-secret-" * 3),
    "alg none": lambda u: _alg_none({"sub": u, "exp": FUTURE}),
    "no exp": lambda u: _forge({"sub": u}),
    "no sub": lambda u: _forge({"exp": FUTURE}),
    "HS512": lambda u: _forge({"sub": u, "exp": FUTURE}, alg="HS512"),
    "garbage": lambda u: "not.a.jwt",
    "missing": lambda u: None,
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_bad_tokens_close_with_4401(make_node, clients, user, kind) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.send({"type": "hello", "token": BAD_TOKENS[kind](user)} if kind != "missing"
                      else {"type": "hello"})
    code, frames = await client.closed()
    assert code == 4401
    assert frames[0]["type"] == "error" and frames[0]["code"] == "unauthorized"
    assert all(f["type"] != "welcome" for f in frames)


async def test_token_expiry_closes_an_open_socket(make_node, clients, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(auth.mint_token(SECRET, user, ttl=3))
    code, frames = await client.closed(timeout=8)
    assert code == 4401 and frames[-1]["code"] == "token_expired"


async def test_no_hello_in_time_closes_with_4408(make_node, clients) -> None:
    node = await make_node(hello_timeout=0.5)
    client = await clients(node.port)
    code, frames = await client.closed(timeout=5)
    assert code == 4408 and frames[0]["code"] == "hello_timeout"


@pytest.mark.parametrize("frame", [
    "not json",
    "[1, 2, 3]",
    '"a string"',
    '{"type": "launch_missiles"}',
    '{"no_type": true}',
    b"\x00\x01binary",
])
async def test_malformed_first_frames_close_with_4400(make_node, clients, frame) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.send(frame)
    code, frames = await client.closed()
    assert code == 4400 and frames[0]["type"] == "error"


@pytest.mark.parametrize("frame", [
    {"type": "ack", "seq": "42"},
    {"type": "ack", "seq": -1},
    {"type": "ack", "seq": True},
    {"type": "ack"},
    {"type": "read", "ids": "all"},
    {"type": "read", "ids": []},
    {"type": "read", "ids": [1.5]},
    {"type": "read", "ids": list(range(1, 1002))},
    {"type": "read", "all": "yes"},
    {"type": "hello", "token": "again"},
    {"type": "hello", "last_seq": "7"},
])
async def test_malformed_frames_after_hello_close_only_that_socket(
    make_node, clients, sql, user, frame
) -> None:
    node = await make_node()
    bad, good = await clients(node.port), await clients(node.port)
    await bad.hello(token_for(user + "-bad"))
    await good.hello(token_for(user))
    await bad.send(frame)
    code, frames = await bad.closed()
    assert code == 4400 and frames[-1]["type"] == "error"
    await insert(sql, user, "still served")
    assert (await good.notifications(1))[0]["title"] == "still served"


async def test_first_frame_must_be_hello(make_node, clients) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.send({"type": "ping"})
    code, frames = await client.closed()
    assert code == 4400 and frames[0]["code"] == "hello_required"


async def test_oversized_frame_closes_with_1009_and_others_are_served(
    make_node, clients, sql, user
) -> None:
    node = await make_node(max_frame_bytes=4096)
    big, good = await clients(node.port), await clients(node.port)
    await good.hello(token_for(user))
    await big.hello(token_for(user + "-big"))
    await big.send({"type": "read", "ids": [1], "padding": "x" * 10_000})
    code, _ = await big.closed()
    assert code == 1009
    await insert(sql, user, "after the big one")
    assert (await good.notifications(1))[0]["title"] == "after the big one"


async def test_frame_flood_closes_with_4429(make_node, clients, user) -> None:
    node = await make_node(frame_rate=5.0, frame_burst=10)
    client = await clients(node.port)
    await client.hello(token_for(user))
    for _ in range(40):
        try:
            await client.send({"type": "ping"})
        except Exception:
            break
    code, frames = await client.closed()
    assert code == 4429 and frames[-1]["code"] == "rate_limited"


async def test_ping_pong(make_node, clients, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}


async def test_foreign_origin_is_refused_at_handshake(make_node, clients, user) -> None:
    node = await make_node(allowed_origins=("https://shop.example",))
    from tornado.httpclient import HTTPClientError

    with pytest.raises(HTTPClientError) as err:
        await clients(node.port, headers={"Origin": "https://evil.example"})
    assert err.value.code == 403
    ok = await clients(node.port, headers={"Origin": "https://shop.example"})
    await ok.hello(token_for(user))
    same = await clients(node.port, headers={"Origin": f"http://127.0.0.1:{node.port}"})
    await same.hello(token_for(user))


async def test_cookie_login_works_without_token_in_hello(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port, headers={"Cookie": f"herald_token={token_for(user)}"})
    welcome = await client.hello(None)
    assert welcome["user"] == user
    await insert(sql, user, "via cookie")
    assert (await client.notifications(1))[0]["title"] == "via cookie"


async def test_node_shutdown_closes_sockets_with_1001(make_node, clients, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    stopping = asyncio.create_task(node.stop())
    code, _ = await client.closed()
    await stopping
    assert code == 1001


async def test_a_stop_step_that_hangs_does_not_hang_the_stop(database_url, sql) -> None:
    """A connection held out of the pool (a request stuck on the database) would keep
    pool.close() waiting for ever: stop() gives each step the grace period, names the
    one that hung and ends, and the pool's connections are closed all the same."""
    server = HeraldServer(make_config(node="node-stuck", shutdown_grace=0.5), database_url)
    await server.start()
    held = await server._pool.acquire()  # type: ignore[attr-defined]
    pid = held.get_server_pid()
    started = time.monotonic()
    await asyncio.wait_for(server.stop(), 10)
    assert time.monotonic() - started < 3
    assert server.stuck == ["pool"]
    await wait_for(lambda: _gone(sql, pid), timeout=5)


async def _gone(sql, pid: int) -> bool:
    return not await sql.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)


async def test_keepalive_closes_a_peer_that_stops_answering_pings(make_node, clients,
                                                                   user) -> None:
    """One node-wide sweep pings every socket; a client that never answers (here: a raw
    socket that said hello and stopped reading) is closed within ping interval + pong
    timeout (docs/protocol.md "Liveness"), a live one is kept."""
    node = await make_node("node-a", ws_ping_interval=0.4, ws_pong_timeout=0.8)
    live = await clients(node.port)
    await live.hello(token_for(user))
    silent = await asyncio.to_thread(stalled_client, node.port, token_for(f"{user}-silent"))
    dead = node.metrics.refused.labels("dead_peer")
    try:
        await wait_for(lambda: node.hub.count() == 2, timeout=5)
        started = time.monotonic()  # it stopped answering before this: the bound holds
        await wait_for(lambda: dead._value.get() == 1, timeout=5, interval=0.01)
        assert time.monotonic() - started <= 0.4 + 0.8 + 0.1  # (+ one sweep's jitter)
        # Tornado waits 5 s for a close reply it will not get, then lets the socket go.
        await wait_for(lambda: node.hub.count() == 1, timeout=10)
        assert node.hub.clients(user)  # the one that answers pings is still there
        await live.sync()
        assert dead._value.get() == 1
    finally:
        silent.close()


async def test_a_draining_node_refuses_new_sockets_with_503(make_node, clients, user) -> None:
    """A client closed with 1001 reconnects at once, and through a load balancer's
    kept-alive connection it may reach the same node: while draining, the node answers
    the upgrade with 503 (nginx then tries another node) instead of a socket it would
    close again."""
    node = await make_node("node-a")
    live = await clients(node.port)
    await live.hello(token_for(user))
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # a kept-alive connection
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    stopping = asyncio.create_task(node.stop())
    await asyncio.sleep(0.02)
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    code, _ = await live.closed()
    assert code == 1001
    writer.close()
    await stopping
