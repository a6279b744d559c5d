"""Losing the database connections while notifications keep coming: nothing lost,
nothing duplicated, everything in order, and /readyz tells the truth."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import token_for
from tests.helpers import wait_for
from tests.proxy import PgProxy


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/readyz",
                                             raise_error=False)
    return response.code, json.loads(response.body)


async def terminate(conn: asyncpg.Connection, pattern: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE $1 AND pid <> pg_backend_pid()", pattern))


async def test_killed_backends_lose_nothing(make_node, clients, sql, database_url, user) -> None:
    """pg_terminate_backend on every backend of both nodes (pool and LISTEN), three
    times, while four writers insert for five users split across the nodes."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    users = [f"{user}-{i}" for i in range(5)]
    sockets = {}
    for i, name in enumerate(users):
        sockets[name] = await clients((node_a if i % 2 else node_b).port)
        await sockets[name].hello(token_for(name))
        await sockets[name].sync()

    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=4)
    committed: dict[str, list[int]] = {u: [] for u in users}

    async def writer(w: int) -> None:
        for i in range(60):
            name = users[(w + i) % len(users)]
            seq = await pool.fetchval("INSERT INTO herald.notifications (user_id, title) "
                                      "VALUES ($1, $2) RETURNING seq", name, f"{w}-{i}")
            committed[name].append(seq)
            await asyncio.sleep(0.005)

    writers = asyncio.gather(*(writer(w) for w in range(4)))
    killed = 0
    for _ in range(3):
        await asyncio.sleep(0.25)
        killed += await terminate(sql, "herald:node-%")
    await writers
    await pool.close()
    assert killed >= 6  # each round hit at least the two LISTEN connections

    for name in users:
        expected = sorted(committed[name])
        assert expected == list(range(1, len(expected) + 1))
        frames = await sockets[name].notifications(len(expected), timeout=20)
        assert [f["seq"] for f in frames] == expected, name
        await sockets[name].expect_silence(0.3)

    for node in (node_a, node_b):
        await wait_for(lambda n=node: n.bus.connected, timeout=10)
        code, body = await readyz(node.port)
        assert code == 200 and body["listen"] and body["database"]
        assert node.bus.reconnects >= 1
    metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{node_a.port}/metrics")).body
    assert b"herald_bus_reconnects_total" in metrics


@pytest.fixture
async def proxy(database_url: str):
    p = PgProxy(database_url)
    await p.start()
    yield p
    await p.stop()


async def test_silently_dead_listen_connection_is_detected(
    make_node, clients, sql, proxy, user
) -> None:
    """The LISTEN connection stops answering without any FIN or RST: only the ping can
    notice. The node must reconnect and catch its clients up from the table."""
    node = await make_node("node-a", bus_ping_interval=0.3, database_url=proxy.url)
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    bus_links = proxy.links(lambda link: b":bus" in link.startup)
    assert len(bus_links) == 1
    bus_links[0].frozen = True
    for i in range(5):
        await sql.execute("INSERT INTO herald.notifications (user_id, title) VALUES ($1, $2)",
                          user, f"while frozen {i}")
    frames = await client.notifications(5, timeout=10)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    assert node.bus.reconnects == 1
    bus_links[0].cut()


async def test_readyz_fails_while_listen_is_down_and_recovers(
    make_node, proxy, user
) -> None:
    node = await make_node("node-a", bus_ping_interval=0.3, database_url=proxy.url)
    assert (await readyz(node.port))[0] == 200
    proxy.refuse_new = True
    for link in proxy.links(lambda link: b":bus" in link.startup):
        link.cut()
    await wait_for(lambda: not node.bus.connected, timeout=5)
    code, body = await readyz(node.port)
    assert code == 503 and body["listen"] is False
    proxy.refuse_new = False
    await wait_for(lambda: node.bus.connected, timeout=10)
    assert (await readyz(node.port))[0] == 200
