"""The targeted bus (revision 0011, app/shards.py, app/bus.py): announcements go on one
channel per user shard and a node listens to the shards of its local users only, so a
commit wakes only the nodes that hold its user. Real PostgreSQL, real nodes, real sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import uuid
from typing import Any

from app import auth, db, shards
from tests.conftest import insert, token_for
from tests.helpers import ROOT, frame_payload, metric, notification_frame, private_channel, wait_for

EVENTS = ('herald_bus_events_total{kind="new"}', 'herald_bus_events_total{kind="frame"}')


def users_in_other_shards(count: int, *taken: str) -> list[str]:
    """``count`` fresh user ids, each in a shard none of ``taken`` (nor the others) is in."""
    used = {shards.shard_of(u) for u in taken}
    found: list[str] = []
    while len(found) < count:
        candidate = f"s-{uuid.uuid4().hex[:10]}"
        if shards.shard_of(candidate) not in used:
            used.add(shards.shard_of(candidate))
            found.append(candidate)
    return found


# Loads static/herald.js in Node.js as a page would: ``window`` (with a recording
# WebSocket), then the script given after it; argv[1] is herald.js, argv[2] an argument.
HERALD_JS = """
const fs = require('fs');
const urls = [];
class FakeSocket { constructor(url) { urls.push(url); } send() {} close() {} }
const window = {addEventListener() {}, removeEventListener() {},
                location: {protocol: 'http:', host: 'x'}, WebSocket: FakeSocket};
global.WebSocket = FakeSocket;
new Function('window', fs.readFileSync(process.argv[1], 'utf8'))(window);
const C = window.HeraldClient;
"""


def run_herald_js(script: str, argument: str = "", stdin: str = "") -> Any:
    """Run ``script`` after herald.js in Node.js; the JSON it prints."""
    result = subprocess.run(["node", "-e", HERALD_JS + script,
                             str(ROOT / "static" / "herald.js"), argument],
                            input=stdin, capture_output=True, text=True, check=True, timeout=30)
    return json.loads(result.stdout)


async def events(port: int) -> float:
    """Bus events of new rows this node has heard (pointers and inline frames)."""
    return sum([await metric(port, name) for name in EVENTS])


async def events_settle(port: int, expected: float) -> float:
    """The node's count of new-row events once it reached ``expected`` (or after 3 s),
    and a moment later: anything more would show."""
    for _ in range(30):
        if await events(port) >= expected:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)
    return await events(port)


async def test_python_sql_and_herald_js_compute_the_same_shard(sql) -> None:
    ids = ["alice", "bob", "", "Ωmega", "用户", "emoji😀", "x" * 55, "y" * 56, "z" * 64,
           "w" * 119, "v" * 255] + [f"user-{i}" for i in range(300)]
    expected = [shards.shard_of(u) for u in ids]
    assert set(expected) == set(range(shards.SHARDS))  # 311 ids reach every shard
    in_sql = await sql.fetchval("SELECT array_agg(herald.shard_of(u) ORDER BY i) "
                                "FROM unnest($1::text[]) WITH ORDINALITY AS t(u, i)", ids)
    assert list(in_sql) == expected
    in_js = run_herald_js("const ids = JSON.parse(fs.readFileSync(0, 'utf8'));"
                          "console.log(JSON.stringify(ids.map((u) => C.shardOf(u))));",
                          stdin=json.dumps(ids))
    assert in_js == expected


async def test_a_node_wakes_only_for_the_shards_of_its_users(make_node, clients, sql) -> None:
    """Rows for users of other shards never reach this node's bus; its own user's row
    does, and it listens to exactly that user's shard."""
    node = await make_node("node-a")
    mine, *others = users_in_other_shards(6)
    client = await clients(node.port)
    await client.hello(token_for(mine))
    await client.sync()
    assert await metric(node.port, "herald_bus_shards") == 1
    before = await events(node.port)
    for other in others:
        async with sql.transaction():  # a pointer and a frame each, elsewhere
            await insert(sql, other, "not for this node")
    marker = await client.nothing_before_sentinel(sql, mine)
    assert marker["seq"] == 1
    assert await events_settle(node.port, before + 2) == before + 2  # the marker's only


async def test_one_user_on_two_nodes_gets_everything_once_and_in_order(
    make_node, clients, sql
) -> None:
    """Both nodes listen to the user's shard (node B also to others'): each socket gets
    every row, once, in order, whichever node's fetch or frame delivered it."""
    a, b = await make_node("node-a"), await make_node("node-b")
    (user,) = users_in_other_shards(1)
    (elsewhere,) = users_in_other_shards(1, user)
    on_a, on_b, other = (await clients(a.port), await clients(b.port),
                         await clients(b.port))
    await on_a.hello(token_for(user))
    await on_b.hello(token_for(user))
    await other.hello(token_for(elsewhere))
    pool = await db.create_pool(a.database_url, "herald-test-writers", min_size=4, max_size=4)
    try:
        async def writer(k: int) -> None:
            for i in range(10):
                async with pool.acquire() as conn, conn.transaction():
                    await insert(conn, user, f"w{k}-{i}")
                    if i % 3 == 0:
                        await insert(conn, elsewhere, f"w{k}-{i}")
        await asyncio.gather(*(writer(k) for k in range(4)))
    finally:
        await pool.close()
    for sock in (on_a, on_b):
        assert [f["seq"] for f in await sock.notifications(40)] == list(range(1, 41))
    marker = await insert(sql, user, "marker: nothing came twice before it")
    for sock in (on_a, on_b):
        assert [f["seq"] for f in await sock.notifications(1)] == [marker["seq"]]
    assert [f["seq"] for f in await other.notifications(16)] == list(range(1, 17))


async def test_rows_committed_while_a_shard_is_being_listened_to_are_not_missed(
    make_node, clients, sql
) -> None:
    """A node gains its first socket of a shard while rows are committed for it: the
    rows committed before its LISTEN took effect (their NOTIFY went to nobody) are read
    by the session's replay, which runs after the LISTEN. The last rows come with no
    later row to announce them, so a replay read before the LISTEN would lose them."""
    node = await make_node("node-a")
    (user,) = users_in_other_shards(1)
    bus = node._bus
    assert bus is not None
    listen_shard = bus._listen_shard
    committed: list[int] = []

    async def slow_listen(conn: Any, shard: int) -> None:
        bus._listen_shard = listen_shard  # once
        for i in range(3):  # committed after the session joined, before the LISTEN
            committed.append((await insert(sql, user, f"meanwhile {i}"))["seq"])
        await listen_shard(conn, shard)

    bus._listen_shard = slow_listen  # type: ignore[method-assign]
    await insert(sql, user, "before")
    client = await clients(node.port)
    await client.hello(token_for(user), last_seq=0)
    assert [f["seq"] for f in await client.notifications(4)] == [1, 2, 3, 4]
    assert committed == [2, 3, 4]
    live = await insert(sql, user, "live")
    assert [f["seq"] for f in await client.notifications(1)] == [live["seq"]]


async def test_many_sockets_joining_during_a_stream_of_commits_miss_nothing(
    make_node, clients, sql
) -> None:
    """Eight users, each of a shard of its own, connect at staggered moments while rows
    are committed for all of them; each gets every row, once, in order."""
    node = await make_node("node-a", shard_linger=0.05)
    users = users_in_other_shards(8)
    stop = asyncio.Event()
    counts = dict.fromkeys(users, 0)

    async def write() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            user = users[i % len(users)]
            await insert(sql, user, f"n{i}")
            counts[user] += 1
            await asyncio.sleep(0.002)

    writer = asyncio.create_task(write())
    socks = []
    for user in users:
        await asyncio.sleep(0.05)
        sock = await clients(node.port)
        await sock.hello(token_for(user), last_seq=0)
        socks.append(sock)
    await asyncio.sleep(0.1)
    stop.set()
    await writer
    for user, sock in zip(users, socks, strict=True):
        assert counts[user] > 0
        got = [f["seq"] for f in await sock.notifications(counts[user])]
        assert got == list(range(1, counts[user] + 1)), user
        await sock.nothing_before_sentinel(sql, user)


async def test_after_a_bus_loss_every_shard_is_listened_to_again(
    make_node, clients, sql
) -> None:
    """The LISTEN connection is killed: the node reconnects, listens to its sockets'
    shards again, re-reads the table (rows of the gap arrive) and hears them live."""
    node = await make_node("node-a", bus_ping_interval=0.3)
    users = users_in_other_shards(3)
    socks = []
    for user in users:
        sock = await clients(node.port)
        await sock.hello(token_for(user))
        socks.append(sock)
    await socks[-1].sync()
    await sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'herald:node-a:bus'")
    for user in users:
        await insert(sql, user, "during the gap")
    await wait_for(lambda: node._bus is not None and node._bus.reconnects >= 1, timeout=15)
    for user, sock in zip(users, socks, strict=True):
        await insert(sql, user, "after")
        assert [f["seq"] for f in await sock.notifications(2)] == [1, 2]
    assert await metric(node.port, "herald_bus_shards") == 3


async def test_a_shard_is_let_go_after_its_last_user_leaves(make_node, clients, sql) -> None:
    node = await make_node("node-a", shard_linger=0.1)
    leaving, staying = users_in_other_shards(2)
    stays = await clients(node.port)
    await stays.hello(token_for(staying))
    goes = await clients(node.port)
    await goes.hello(token_for(leaving))
    await goes.sync()
    assert await metric(node.port, "herald_bus_shards") == 2
    goes.close()
    await wait_for(lambda: node._bus is not None and len(node._bus.shards()) == 1, timeout=5)
    assert node._bus is not None and node._bus.shards() == [shards.shard_of(staying)]
    before = await events(node.port)
    async with sql.transaction():
        await insert(sql, leaving, "while away")
    await stays.nothing_before_sentinel(sql, staying)
    assert await events_settle(node.port, before + 2) == before + 2  # the sentinel's only
    back = await clients(node.port)
    await back.hello(token_for(leaving), last_seq=0)
    assert [f["title"] for f in await back.notifications(1)] == ["while away"]


async def test_forged_payloads_on_shard_channels_are_refused(make_node, clients, sql) -> None:
    """Anyone may NOTIFY on a shard's public channel; a node believes no frame there, and
    on the private shard channel only one with a valid MAC."""
    node = await make_node("node-a")
    (user,) = users_in_other_shards(1)
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    shard = shards.shard_of(user)
    private, key = await private_channel(sql)
    refused = 'herald_refused_total{reason="bus_payload"}'
    before = await metric(node.port, refused)
    fake = notification_frame(1, "forged")
    await sql.execute("SELECT pg_notify($1, $2)", shards.channel("herald", shard),
                      frame_payload(user, fake, key)[64:])
    await sql.execute("SELECT pg_notify($1, $2)", shards.channel("herald", shard), "{junk")
    await sql.execute("SELECT pg_notify($1, $2)", shards.channel(private, shard),
                      frame_payload(user, fake, None))
    marker = await client.nothing_before_sentinel(sql, user)
    assert marker["title"] != "forged" and marker["seq"] == 1
    assert await metric(node.port, refused) == before + 3
    # The key makes a frame believable on the shard's private channel, as on the base one.
    real = notification_frame(2, "signed")
    await sql.execute("SELECT pg_notify($1, $2)", shards.channel(private, shard),
                      frame_payload(user, real, key))
    assert await client.notifications(1) == [real]


async def test_a_wrong_routing_key_costs_nothing_but_a_count(make_node, clients, sql) -> None:
    node = await make_node("node-a")
    (user,) = users_in_other_shards(1)
    wrong = (shards.shard_of(user) + 1) % shards.SHARDS
    seq = 0
    for key, result in ((wrong, "miss"), (shards.shard_of(user), "hit"), (None, "none"),
                        ("x1", "none")):
        query = "" if key is None else f"?shard={key}"
        sock = await clients(node.port, path=f"/ws{query}")
        await sock.hello(token_for(user), last_seq=seq)
        await sock.sync()
        row = await insert(sql, user, f"via {result}")
        assert [f["title"] for f in await sock.notifications(1)] == [f"via {result}"]
        seq = row["seq"]
        sock.close()
    for result, count in (("miss", 1), ("hit", 1), ("none", 2)):
        assert await metric(node.port, f'herald_ws_routing_total{{result="{result}"}}') == count


async def test_a_shard_wanted_while_the_bus_reconnects_is_listened_to(
    make_node, clients, sql
) -> None:
    """A session starts while the bus is reconnecting (here: during the new connection's
    first ping, after the shards wanted so far were listened to): its shard is listened
    to before the bus says it is up, so the user's later rows arrive live."""
    node = await make_node("node-a", bus_ping_interval=0.3)
    first, late = users_in_other_shards(2)
    sock = await clients(node.port)
    await sock.hello(token_for(first))
    await sock.sync()
    bus = node._bus
    assert bus is not None
    ping = bus._ping
    pinging = asyncio.Event()

    async def slow_ping() -> int:
        if not bus.connected:  # the reconnect's ping: the late session starts meanwhile
            pinging.set()
            await asyncio.sleep(1.0)
        return await ping()

    bus._ping = slow_ping  # type: ignore[method-assign]
    await sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = 'herald:node-a:bus'")
    await asyncio.wait_for(pinging.wait(), 15)
    late_sock = await clients(node.port)
    await late_sock.hello(token_for(late))
    await wait_for(lambda: bus.connected, timeout=15)
    row = await insert(sql, late, "after the reconnect")
    assert [f["seq"] for f in await late_sock.notifications(1)] == [row["seq"]]
    assert shards.shard_of(late) in bus.shards()


def test_herald_js_routes_by_the_token_subject_the_user_option_or_the_welcome() -> None:
    """herald.js adds ?shard= (or &shard=) to the socket's URL: from the token's sub,
    else the user option, else the user of the last welcome."""
    token = auth.mint_token("secret-for-this-test-0123456789", "Ωmega-sub", 60)
    script = """
const token = process.argv[2];
new C({url: 'ws://h/ws', token: token});
new C({url: 'ws://h/ws?x=1', token: null, user: 'alice'});
const plain = new C({url: 'ws://h/ws', token: null});
setTimeout(() => {
  plain._frame(plain._ws, {type: 'welcome', user: 'bob', node: 'n', last_seq: 0, unread: 0});
  plain.connect();
  setTimeout(() => { console.log(JSON.stringify(urls)); process.exit(0); }, 50);
}, 50);
"""
    urls = run_herald_js(script, token)
    assert urls == [f"ws://h/ws?shard={shards.shard_of('Ωmega-sub')}",
                    f"ws://h/ws?x=1&shard={shards.shard_of('alice')}",
                    "ws://h/ws",
                    f"ws://h/ws?shard={shards.shard_of('bob')}"], urls
