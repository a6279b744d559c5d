"""Muted categories (revision 0012, docs/protocol.md): muted from SQL, HTTP and the
WebSocket, pushed as a ``preferences`` frame to every socket of the user on every node;
unread counts leave muted categories out everywhere (welcome, pushes, history, HTTP
answers) and come back on unmute; at most 100 per user, in the database too; bad input
of every kind is refused and changes nothing; forged bus payloads push nothing. Two real
nodes, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from app import db, shards
from app.store import unread_count
from tests.conftest import token_for
from tests.helpers import WsClient, call, metric, wait_for


async def add(sql: asyncpg.Connection, user: str, category: str | None, count: int = 1) -> None:
    await sql.execute(
        "INSERT INTO herald.notifications (user_id, title, category) "
        "SELECT $1, 'n' || g, $2 FROM generate_series(1, $3) g", user, category, count)


async def muted_of(sql: asyncpg.Connection, user: str) -> list[str]:
    return [r["category"] for r in await sql.fetch(
        "SELECT category FROM herald.muted_categories WHERE user_id = $1 "
        "ORDER BY category COLLATE \"C\"", user)]


async def next_of(client: WsClient, *kinds: str) -> Any:
    """The next frame of each of ``kinds``, skipping others: the frame when one kind is
    named, else ``{kind: frame}`` (they may come in any order)."""
    got: dict[str, Any] = {}
    while set(got) != set(kinds):
        frame = await client.recv()
        assert frame is not None
        if frame["type"] in kinds:
            assert frame["type"] not in got, frame
            got[frame["type"]] = frame
    return got[kinds[0]] if len(kinds) == 1 else got


async def sockets_on_two_nodes(make_node, clients, user: str) -> tuple[list[Any], list[WsClient]]:
    nodes = [await make_node("node-a"), await make_node("node-b")]
    sockets = []
    for node in nodes:
        client = await clients(node.port)
        await client.hello(token_for(user))
        await client.sync()
        sockets.append(client)
    return nodes, sockets


async def test_muting_from_sql_reaches_every_socket_and_leaves_the_unread_count(
    make_node, clients, sql, user
) -> None:
    await add(sql, user, "marketing", 2)
    await add(sql, user, "orders")
    await add(sql, user, None)
    nodes, sockets = await sockets_on_two_nodes(make_node, clients, user)
    assert [s.frames[0]["muted"] for s in sockets] == [[], []]
    assert [s.frames[0]["unread"] for s in sockets] == [4, 4]

    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'marketing'), ($1, 'zz-never-used')", user)
    for client in sockets:
        assert await next_of(client, "preferences") == {
            "type": "preferences", "muted": ["marketing", "zz-never-used"], "unread": 2}
    # A new socket's welcome, history, a change push and an HTTP answer: all without it.
    late = await clients(nodes[1].port)
    welcome = await late.hello(token_for(user))
    assert (welcome["muted"], welcome["unread"]) == (["marketing", "zz-never-used"], 2)
    assert list(welcome)[-1] == "muted"
    status, page = await call(nodes[0].port, "GET", "/api/notifications", token=token_for(user))
    assert status == 200 and (page["unread"], page["muted"]) == (
        2, ["marketing", "zz-never-used"])
    assert len(page["notifications"]) == 4  # muted rows are still listed
    orders = await sql.fetchval("SELECT id FROM herald.notifications WHERE user_id = $1 "
                                "AND category = 'orders'", user)
    status, body = await call(nodes[0].port, "POST", "/api/notifications/read",
                              {"ids": [orders]}, token=token_for(user))
    assert status == 200 and body == {"updated": 1, "unread": 1}
    for client in sockets:
        assert await next_of(client, "read") == {"type": "read", "ids": [orders], "unread": 1}

    # Already muted: nothing inserted, nothing announced.
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'marketing') ON CONFLICT DO NOTHING", user)
    await sockets[0].expect_silence(0.5)

    await sql.execute("DELETE FROM herald.muted_categories WHERE user_id = $1", user)
    for client in sockets:
        assert await next_of(client, "preferences") == {
            "type": "preferences", "muted": [], "unread": 3}
    status, page = await call(nodes[1].port, "GET", "/api/notifications", token=token_for(user))
    assert (page["unread"], page["muted"]) == (3, [])


async def test_mute_and_unmute_over_the_socket(make_node, clients, sql, user) -> None:
    await add(sql, user, "marketing", 3)
    await add(sql, user, "orders")
    _, (a, b) = await sockets_on_two_nodes(make_node, clients, user)
    await a.send({"type": "mute", "category": "marketing", "ref": 5})
    got = await next_of(a, "done", "preferences")
    assert got["done"] == {"type": "done", "ref": 5, "changed": 1}
    assert got["preferences"] == {"type": "preferences", "muted": ["marketing"], "unread": 1}
    assert await next_of(b, "preferences") == got["preferences"]
    assert await muted_of(sql, user) == ["marketing"]

    await a.send({"type": "mute", "category": "marketing", "ref": 6})  # already muted
    assert await next_of(a, "done") == {"type": "done", "ref": 6, "changed": 0}
    await a.send({"type": "mute", "category": "ünïcode ✓"})  # no ref: no done
    for client in (a, b):
        assert await next_of(client, "preferences") == {
            "type": "preferences", "muted": ["marketing", "ünïcode ✓"], "unread": 1}
    await b.send({"type": "unmute", "category": "marketing", "ref": 0})
    got = await next_of(b, "done", "preferences")
    assert got["done"] == {"type": "done", "ref": 0, "changed": 1}
    assert got["preferences"] == {"type": "preferences", "muted": ["ünïcode ✓"], "unread": 4}
    await b.send({"type": "unmute", "category": "never muted", "ref": 1})
    assert await next_of(b, "done") == {"type": "done", "ref": 1, "changed": 0}
    assert await next_of(a, "preferences") == got["preferences"]
    await a.expect_silence(0.3)


async def test_preferences_over_http(make_node, clients, sql, user) -> None:
    await add(sql, user, "marketing", 2)
    await add(sql, user, None)
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    token = token_for(user)
    assert await call(node.port, "GET", "/api/preferences", token=token) == (
        200, {"muted": [], "unread": 3})
    assert await call(node.port, "POST", "/api/preferences/mute", {"category": "marketing"},
                      token=token) == (200, {"updated": 1, "muted": ["marketing"], "unread": 1})
    assert await next_of(client, "preferences") == {
        "type": "preferences", "muted": ["marketing"], "unread": 1}
    assert await call(node.port, "POST", "/api/preferences/mute", {"category": "marketing"},
                      token=token) == (200, {"updated": 0, "muted": ["marketing"], "unread": 1})
    assert await call(node.port, "GET", "/api/preferences", token=token) == (
        200, {"muted": ["marketing"], "unread": 1})
    assert await call(node.port, "POST", "/api/preferences/unmute", {"category": "marketing"},
                      token=token) == (200, {"updated": 1, "muted": [], "unread": 3})
    assert await next_of(client, "preferences") == {
        "type": "preferences", "muted": [], "unread": 3}
    assert (await call(node.port, "GET", "/api/preferences"))[0] == 401


BAD_WS_FRAMES = [
    {"type": "mute"},
    {"type": "mute", "category": ""},
    {"type": "mute", "category": "c" * 65},
    {"type": "mute", "category": 5},
    {"type": "mute", "category": None},
    {"type": "mute", "category": ["marketing"]},
    {"type": "mute", "category": "marketing", "extra": True},
    {"type": "mute", "category": "marketing", "ids": [1]},
    {"type": "mute", "category": "marketing", "ref": -1},
    {"type": "mute", "category": "marketing", "ref": "1"},
    {"type": "unmute", "category": ""},
    {"type": "unmute", "categories": ["marketing"]},
]


@pytest.mark.parametrize("frame", BAD_WS_FRAMES, ids=[json.dumps(f)[:50] for f in BAD_WS_FRAMES])
async def test_bad_mute_frames_are_malformed_and_change_nothing(
    make_node, clients, sql, user, frame
) -> None:
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'marketing')", user)
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.send(frame)
    code, seen = await client.closed()
    assert code == 4400 and seen[-1]["code"] == "malformed", seen
    assert await muted_of(sql, user) == ["marketing"]


async def test_bad_preference_requests_over_http_are_400_and_change_nothing(
    make_node, sql, user
) -> None:
    node = await make_node()
    token = token_for(user)
    for kind in ("mute", "unmute"):
        for body in ({}, {"category": ""}, {"category": "c" * 65}, {"category": 5},
                     {"category": None}, {"category": "a", "extra": 1}, ["a"], "a"):
            status, answer = await call(node.port, "POST", f"/api/preferences/{kind}", body,
                                        token=token)
            assert status == 400 and answer["error"]["code"] == "invalid_request", body
        status, answer = await call(node.port, "POST", f"/api/preferences/{kind}",
                                    raw=b"{not json", token=token)
        assert status == 400 and answer["error"]["code"] == "invalid_json"
    status, answer = await call(node.port, "GET", "/api/preferences?muted=x", token=token)
    assert status == 400
    assert await muted_of(sql, user) == []
    # The table's own checks, for SQL writers.
    for user_id, category, constraint in (
            (user, "", "ck_muted_categories_category_length"),
            (user, "c" * 65, "ck_muted_categories_category_length"),
            ("", "marketing", "ck_muted_categories_user_id_length"),
            ("u" * 256, "marketing", "ck_muted_categories_user_id_length")):
        with pytest.raises(asyncpg.CheckViolationError) as err:
            await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                              "VALUES ($1, $2)", user_id, category)
        assert err.value.constraint_name == constraint
    with pytest.raises(asyncpg.NotNullViolationError):
        await sql.execute("INSERT INTO herald.muted_categories (user_id) VALUES ($1)", user)
    assert await muted_of(sql, user) == []


async def test_at_most_100_muted_categories(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    with pytest.raises(asyncpg.CheckViolationError) as err:  # 101 in one statement
        await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                          "SELECT $1, 'c' || g FROM generate_series(1, 101) g", user)
    assert err.value.constraint_name == "muted_categories_limit"
    assert await muted_of(sql, user) == []
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "SELECT $1, 'c' || g FROM generate_series(1, 100) g", user)
    assert len((await next_of(client, "preferences"))["muted"]) == 100
    with pytest.raises(asyncpg.CheckViolationError):
        await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                          "VALUES ($1, 'one more')", user)
    # Re-muting one already muted is no new row: fine at the limit.
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'c1') ON CONFLICT DO NOTHING", user)
    status, body = await call(node.port, "POST", "/api/preferences/mute",
                              {"category": "one more"}, token=token_for(user))
    assert status == 409 and body["error"]["code"] == "too_many_muted"
    await client.send({"type": "mute", "category": "one more", "ref": 9})
    error = await next_of(client, "error")
    assert (error["code"], error["ref"]) == ("too_many_muted", 9)
    await client.send({"type": "mute", "category": "c2", "ref": 10})  # not fatal: goes on
    assert await next_of(client, "done") == {"type": "done", "ref": 10, "changed": 0}
    assert len(await muted_of(sql, user)) == 100
    # Another user is not limited by this one's list.
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1 || '-other', 'one more')", user)
    await client.expect_silence(0.3)


async def test_the_limit_holds_for_concurrent_transactions(database_url, sql, user) -> None:
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "SELECT $1, 'c' || g FROM generate_series(1, 99) g", user)
    other = await db.connect(database_url, "herald-test-mute-race")
    try:
        first = sql.transaction()
        await first.start()
        await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                          "VALUES ($1, 'first')", user)
        second = asyncio.create_task(other.execute(
            "INSERT INTO herald.muted_categories (user_id, category) VALUES ($1, 'second')",
            user))
        await asyncio.sleep(0.3)
        assert not second.done()  # waits for the first one's lock
        await first.commit()
        with pytest.raises(asyncpg.CheckViolationError):
            await second
    finally:
        await other.close()
    assert len(await muted_of(sql, user)) == 100


async def test_forged_and_malformed_payloads_push_nothing(make_node, clients, sql, user) -> None:
    await add(sql, user, "marketing")
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.notifications(1)
    channel = shards.channel("herald", shards.shard_of(user))
    refused = await metric(node.port, 'herald_refused_total{reason="bus_payload"}')
    malformed = [
        {"k": "prefs"},
        {"k": "prefs", "u": ""},
        {"k": "prefs", "u": 5},
        {"k": "prefs", "u": user, "muted": ["marketing"]},
        {"k": "prefs", "u": [user]},
    ]
    for payload in malformed:
        await sql.execute("SELECT pg_notify($1, $2)", channel, json.dumps(payload))
    await wait_for(lambda: metric(node.port, 'herald_refused_total{reason="bus_payload"}'),
                   timeout=5)
    # Well-formed but nothing changed: the table says what the socket already knows.
    prefs_events = 'herald_bus_events_total{kind="prefs"}'
    before = await metric(node.port, prefs_events)
    await sql.execute("SELECT pg_notify($1, $2)", channel,
                      json.dumps({"k": "prefs", "u": user}))
    await wait_for(lambda: _at_least(node.port, prefs_events, before + 1))
    await client.expect_silence(0.5)
    assert await metric(node.port, 'herald_refused_total{reason="bus_payload"}') == \
        refused + len(malformed)
    # A real change after all that is pushed as usual (the payloads broke nothing).
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'marketing')", user)
    assert await next_of(client, "preferences") == {
        "type": "preferences", "muted": ["marketing"], "unread": 0}


async def _at_least(port: int, name: str, value: float) -> bool:
    return await metric(port, name) >= value


async def test_the_unread_count_stays_on_the_unread_index(sql, user) -> None:
    """EXPLAIN: the muted list is an InitPlan read once per user, and the count walks
    ix_notifications_unread, as it did before muting existed."""
    await add(sql, user, "marketing", 50)
    await sql.execute("INSERT INTO herald.muted_categories (user_id, category) "
                      "VALUES ($1, 'marketing')", user)
    await sql.execute("ANALYZE herald.notifications")
    async with sql.transaction():
        await sql.execute("SET LOCAL enable_seqscan = off")  # a small table: as a big one
        plan = "\n".join(r[0] for r in await sql.fetch(
            f"EXPLAIN SELECT u, {unread_count('u')} FROM unnest($1::text[]) AS u", [user]))
    print(plan)
    assert "ix_notifications_unread" in plan
    assert "InitPlan" in plan or "pk_muted_categories" in plan
    assert "Seq Scan on notifications" not in plan


# herald.js's queue on a scripted socket (as tests/test_change_confirm.py does): the new
# changes are queued until a welcome, sent in order with their refs, kept until "done";
# too_many_muted drops the change (no retry) and tells onRefused, bad arguments throw at once.
QUEUE_JS = r"""
const fs = require('fs');
const sent = [], seen = [];
class ScriptedSocket {
  constructor(url) { this.readyState = 1; ScriptedSocket.last = this; }
  send(data) { sent.push(JSON.parse(data)); }
  close() {}
}
ScriptedSocket.OPEN = 1;
global.WebSocket = ScriptedSocket;
const window = {addEventListener() {}, removeEventListener() {}, navigator: {onLine: true},
                location: {protocol: 'http:', host: 'x'}};
new Function('window', fs.readFileSync(process.argv[1], 'utf8'))(window);
const client = new window.HeraldClient({
  token: null,
  onWelcome: (w) => seen.push(['welcome', w.muted]),
  onPreferences: (p) => seen.push(['preferences', p.muted, p.unread]),
  onRefused: (change, error) => seen.push(['refused', change.type, change.category, error.code]),
});
const thrown = [];
for (const [method, arg] of [['mute', ''], ['mute', 'c'.repeat(65)], ['unmute', 5],
                             ['readGroup', ''], ['readGroup', 'k'.repeat(201)],
                             ['readGroup', null]]) {
  try { client[method](arg); } catch (err) { thrown.push(err.name); }
}
const queued = [client.mute('marketing'), client.readGroup('pr-12'), client.unmute('tips'),
                client.mute('🚚'.repeat(64))];
const server = (frame) => ScriptedSocket.last.onmessage({data: JSON.stringify(frame)});
setTimeout(() => {
  ScriptedSocket.last.onopen();
  server({type: 'welcome', user: 'a', node: 'n', last_seq: 0, unread: 0, muted: ['tips']});
  server({type: 'done', ref: 1, changed: 1});
  server({type: 'preferences', muted: ['marketing', 'tips'], unread: 0});
  server({type: 'done', ref: 2, changed: 3});
  server({type: 'error', code: 'too_many_muted', message: 'full', ref: 3});
  setTimeout(() => {  // past RETRY_CHANGE_MS: nothing is sent again
    process.stdout.write(JSON.stringify({thrown, queued, sent: sent.filter((f) => f.ref),
                                         seen, pending: client.pending()}));
    process.exit(0);
  }, 1200);
}, 20);
"""


@pytest.mark.unit
def test_herald_js_queues_mutes_and_group_reads_like_changes() -> None:
    import subprocess
    from pathlib import Path

    herald_js = Path(__file__).resolve().parent.parent / "static" / "herald.js"
    result = subprocess.run(["node", "-e", QUEUE_JS, str(herald_js)], capture_output=True,
                            text=True, check=True, timeout=30)
    outcome = json.loads(result.stdout)
    assert outcome["thrown"] == ["TypeError"] * 6
    assert outcome["queued"] == [False] * 4  # no socket yet
    assert outcome["sent"] == [
        {"type": "mute", "category": "marketing", "ref": 1},
        {"type": "read", "group_key": "pr-12", "ref": 2},
        {"type": "unmute", "category": "tips", "ref": 3},
        {"type": "mute", "category": "🚚" * 64, "ref": 4},
    ]
    assert outcome["seen"] == [["welcome", ["tips"]],
                               ["preferences", ["marketing", "tips"], 0],
                               ["refused", "unmute", "tips", "too_many_muted"]]
    assert outcome["pending"] == 1  # ref 4 awaits its done; ref 3 was dropped
