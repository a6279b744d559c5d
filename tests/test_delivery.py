"""End to end: SQL or HTTP in, WebSocket frames out, across two real nodes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from app import client as herald_client
from herald_dev.rawws import send_text, stalled_client
from tests.conftest import API_KEY, insert, token_for
from tests.helpers import wait_for


async def publish(port: int, body: Any, key: str = API_KEY) -> tuple[int, dict[str, Any]]:
    request = HTTPRequest(
        f"http://127.0.0.1:{port}/api/notifications", method="POST", body=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = await AsyncHTTPClient().fetch(request, raise_error=False)
    return response.code, json.loads(response.body)


async def test_sql_insert_reaches_the_open_socket(make_node, clients, sql, user) -> None:
    node = await make_node("node-a")
    client = await clients(node.port)
    welcome = await client.hello(token_for(user))
    assert welcome == {"type": "welcome", "user": user, "node": "node-a", "last_seq": 0,
                       "unread": 0, "muted": []}
    row = await insert(sql, user, "Order #1001 shipped", body="On its way",
                       data={"order_id": 1001}, link="https://shop.example/orders/1001")
    (frame,) = await client.notifications(1)
    assert frame["id"] == row["id"] and frame["seq"] == 1
    assert frame["title"] == "Order #1001 shipped" and frame["body"] == "On its way"
    assert frame["data"] == {"order_id": 1001}
    assert frame["link"] == "https://shop.example/orders/1001"
    assert frame["read"] is False and frame["created_at"].endswith("Z")


async def test_publish_through_node_b_reaches_user_on_node_a(make_node, clients, user) -> None:
    """The original problem: sender's node is not the receiver's node."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    client = await clients(node_a.port)
    await client.hello(token_for(user))
    code, body = await publish(node_b.port, [
        {"user_id": user, "title": "first"},
        {"user_id": user, "title": "second", "data": {"k": 1}},
    ])
    assert code == 201
    assert [n["seq"] for n in body["notifications"]] == [1, 2]
    frames = await client.notifications(2)
    assert [(f["seq"], f["title"]) for f in frames] == [(1, "first"), (2, "second")]
    assert [f["id"] for f in frames] == [n["id"] for n in body["notifications"]]


async def test_offline_user_gets_replay_then_ack_stops_it(make_node, clients, sql, user) -> None:
    node = await make_node()
    for i in range(5):
        await insert(sql, user, f"missed {i}")
    first = await clients(node.port)
    welcome = await first.hello(token_for(user))  # no cursor: everything undelivered
    assert welcome["last_seq"] == 5 and welcome["unread"] == 5
    frames = await first.notifications(5)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    await first.send({"type": "ack", "seq": 3})
    await wait_for(lambda: sql.fetchval(
        "SELECT count(*) = 3 FROM herald.notifications WHERE user_id = $1 "
        "AND delivered_at IS NOT NULL", user))
    first.close()

    second = await clients(node.port)  # a new device: only what nobody acknowledged
    await second.hello(token_for(user))
    assert [f["seq"] for f in await second.notifications(2)] == [4, 5]
    await second.send({"type": "ack", "seq": 5})
    await wait_for(lambda: sql.fetchval(
        "SELECT bool_and(delivered_at IS NOT NULL) FROM herald.notifications "
        "WHERE user_id = $1", user))
    second.close()

    third = await clients(node.port)
    await third.hello(token_for(user))
    await third.nothing_before_sentinel(sql, user)

    resumed = await clients(node.port)  # an explicit cursor wins over delivered_at
    await resumed.hello(token_for(user), last_seq=2)
    assert [f["seq"] for f in await resumed.notifications(3)] == [3, 4, 5]


async def test_ack_cannot_mark_rows_the_connection_was_never_sent(
    make_node, sql, user
) -> None:
    """A client that stopped reading holds the node's delivery at its cursor while rows
    keep coming: an ack "up to 1000" from it marks delivered what that socket was sent,
    not the rows after its cursor (which another device has not seen either)."""
    node = await make_node(max_pending_bytes=64 * 1024, slow_consumer_timeout=60.0)
    sock = await asyncio.to_thread(stalled_client, node.port, token_for(user))
    try:
        await wait_for(lambda: len(node.hub.clients(user)) == 1)
        (session,) = node.hub.clients(user)
        await sql.execute(  # 200 x 24 KB: far past the socket buffers and the pause mark
            "INSERT INTO herald.notifications (user_id, title, body, data) "
            "SELECT $1, 'n' || g, repeat('x', 9000), jsonb_build_object('pad', "
            "repeat('y', 15000)) FROM generate_series(1, 200) g", user)
        await wait_for(lambda: session.cursor > 0 and session.room() <= 0)
        sent = session.cursor
        assert 0 < sent < 200  # paused: rows exist that this socket was never sent
        await asyncio.to_thread(send_text, sock, json.dumps({"type": "ack", "seq": 1000}))

        async def acked() -> bool:
            return await sql.fetchval(
                "SELECT count(delivered_at) FROM herald.notifications WHERE user_id = $1",
                user) > 0

        await wait_for(acked)  # the ack's write is asynchronous: wait until it landed
        delivered = await sql.fetchval(
            "SELECT max(seq) FROM herald.notifications WHERE user_id = $1 "
            "AND delivered_at IS NOT NULL", user)
        assert delivered == sent
    finally:
        sock.close()


async def test_resume_on_other_node_while_300_inserts_race(
    make_node, clients, database_url, user
) -> None:
    """Disconnect from A at some cursor, insert 300 rows concurrently with the reconnect
    to B: the client ends with every seq after its cursor exactly once, in order."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    pool = await asyncpg.create_pool(database_url.replace("+asyncpg", ""), min_size=4,
                                     max_size=4)
    try:
        client = await clients(node_a.port)
        await client.hello(token_for(user))
        for i in range(20):
            await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                               "VALUES ($1, $2)", user, f"before {i}")
        cursor = (await client.notifications(20))[-1]["seq"]
        client.close()

        async def writer(w: int) -> None:
            for i in range(75):
                await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                                   "VALUES ($1, $2)", user, f"race {w}-{i}")

        writers = asyncio.gather(*(writer(w) for w in range(4)))
        await asyncio.sleep(0.02)
        resumed = await clients(node_b.port)
        await resumed.hello(token_for(user), last_seq=cursor)
        frames = await resumed.notifications(300, timeout=30)
        await writers
        await resumed.expect_silence(0.5)
    finally:
        await pool.close()
    assert [f["seq"] for f in frames] == list(range(cursor + 1, cursor + 301))


async def test_read_on_one_node_reaches_the_socket_on_the_other(
    make_node, clients, sql, user
) -> None:
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    phone, laptop = await clients(node_a.port), await clients(node_b.port)
    await phone.hello(token_for(user))
    await laptop.hello(token_for(user))
    ids = [(await insert(sql, user, f"n{i}"))["id"] for i in range(3)]
    await phone.notifications(3)
    await laptop.notifications(3)

    await phone.send({"type": "read", "ids": [ids[0]]})
    for client in (phone, laptop):
        frame = await client.recv()
        assert frame == {"type": "read", "ids": [ids[0]], "unread": 2}
    assert await sql.fetchval("SELECT read_at IS NOT NULL FROM herald.notifications "
                              "WHERE id = $1", ids[0])

    await laptop.send({"type": "read", "all": True})
    for client in (phone, laptop):
        frame = await client.recv()
        assert frame["type"] == "read" and frame["all"] is True and frame["unread"] == 0


async def test_sql_update_of_read_at_is_pushed(make_node, clients, sql, user) -> None:
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    a, b = await clients(node_a.port), await clients(node_b.port)
    await a.hello(token_for(user))
    await b.hello(token_for(user))
    ids = [(await insert(sql, user, f"n{i}"))["id"] for i in range(2)]
    await a.notifications(2)
    await b.notifications(2)
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1", ids[1])
    for client in (a, b):
        assert await client.recv() == {"type": "read", "ids": [ids[1]], "unread": 1}


async def test_users_never_see_each_others_rows(make_node, clients, sql, user) -> None:
    node = await make_node()
    alice, bob = user + "-alice", user + "-bob"
    a, b = await clients(node.port), await clients(node.port)
    await a.hello(token_for(alice))
    await b.hello(token_for(bob))
    mallory_ids = [(await insert(sql, alice, "for alice only"))["id"]]
    await insert(sql, bob, "for bob only")
    assert (await a.notifications(1))[0]["title"] == "for alice only"
    assert (await b.notifications(1))[0]["title"] == "for bob only"
    # bob cannot mark alice's rows read, nor learn of them
    await b.send({"type": "read", "ids": mallory_ids})
    await b.expect_silence(0.4)
    await a.expect_silence(0.1)
    assert await sql.fetchval("SELECT read_at FROM herald.notifications WHERE id = $1",
                              mallory_ids[0]) is None
    # a hello carrying alice's last_seq for bob's token still only gives bob's rows
    other = await clients(node.port)
    await other.hello(token_for(bob), last_seq=0)
    frames = await other.notifications(1)
    assert frames[0]["title"] == "for bob only"
    await other.expect_silence(0.3)


async def test_several_tabs_each_get_every_row_once(make_node, clients, sql, user) -> None:
    node = await make_node()
    tabs = [await clients(node.port) for _ in range(3)]
    for tab in tabs:
        await tab.hello(token_for(user))
    for i in range(10):
        await insert(sql, user, f"n{i}")
    for tab in tabs:
        assert [f["seq"] for f in await tab.notifications(10)] == list(range(1, 11))
    sentinel = await tabs[0].nothing_before_sentinel(sql, user)
    for tab in tabs[1:]:
        assert await tab.recv() == sentinel  # the same row, once, and nothing before it


async def test_acking_every_frame_of_a_big_replay_is_not_rate_limited(
    make_node, clients, sql, user
) -> None:
    node = await make_node(frame_rate=5.0, frame_burst=10)
    await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                      "SELECT $1, 'n' || g FROM generate_series(1, 500) g", user)
    client = await clients(node.port)
    await client.hello(token_for(user))
    for frame in await client.notifications(500):
        await client.send({"type": "ack", "seq": frame["seq"]})
    await wait_for(lambda: sql.fetchval(
        "SELECT count(*) = 500 FROM herald.notifications WHERE user_id = $1 "
        "AND delivered_at IS NOT NULL", user))
    await client.send({"type": "ping"})
    assert (await client.recv())["type"] == "pong"


async def test_joining_beside_a_live_sibling_while_inserts_race(
    make_node, clients, database_url, user
) -> None:
    """A tab joins with an old cursor on the node where another tab of the user is live
    and rows keep coming: the live fan-out (fetched from the sibling's cursor) must not
    reach the newcomer ahead of its own replay. Every joiner gets an unbroken run."""
    node = await make_node("node-a")
    sibling = await clients(node.port)
    await sibling.hello(token_for(user))
    pool = await asyncpg.create_pool(database_url, min_size=3, max_size=3)
    try:
        for i in range(100):
            await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                               "VALUES ($1, $2)", user, f"before {i}")
        await sibling.notifications(100)

        async def writer(w: int) -> None:
            for i in range(100):
                await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                                   "VALUES ($1, $2)", user, f"race {w}-{i}")

        writers = asyncio.gather(*(writer(w) for w in range(3)))
        runs = []
        while not writers.done():
            joiner = await clients(node.port)
            cursor = len(runs) * 7
            await joiner.hello(token_for(user), last_seq=cursor)
            frames = await joiner.notifications(60, timeout=15)
            runs.append((cursor, [f["seq"] for f in frames]))
            joiner.close()
        await writers
    finally:
        await pool.close()
    assert len(runs) >= 2
    for cursor, seqs in runs:
        assert seqs == list(range(cursor + 1, cursor + 61)), (cursor, seqs[:10])


async def test_batching_clients_get_bursts_as_lines_others_one_frame_each(
    make_node, clients, sql, user
) -> None:
    """hello "batch": true lets the node put a burst in few WebSocket frames, one JSON
    message per line; a client that did not ask gets exactly one message per frame."""
    node = await make_node()
    batching = await herald_client.connect(f"ws://127.0.0.1:{node.port}/ws")
    await batching.write_message(herald_client.hello_frame(token_for(user), 0, batch=True))
    plain = await clients(node.port)
    await plain.hello(token_for(user), last_seq=0)
    try:
        assert json.loads(await batching.read_message())["type"] == "welcome"
        await plain.sync()
        await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                          "SELECT $1, 'n' || g FROM generate_series(1, 200) g", user)
        messages: list[str] = []
        seqs: list[int] = []
        while len(seqs) < 200:
            message = await asyncio.wait_for(batching.read_message(), 10)
            assert isinstance(message, str)
            messages.append(message)
            seqs.extend(frame["seq"] for frame in herald_client.parse(message))
        assert seqs == list(range(1, 201))
        assert len(messages) < 20  # bursts, not a frame per row
        assert [f["seq"] for f in await plain.notifications(200)] == list(range(1, 201))
    finally:
        batching.close()
    bad = await clients(node.port)
    await bad.send({"type": "hello", "token": token_for(user), "batch": "yes"})
    code, frames = await bad.closed()
    assert code == 4400 and frames[-1]["code"] == "malformed"
