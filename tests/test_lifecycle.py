"""Rows change and go away (docs/operations.md section of that name; docs/protocol.md "The
guarantees"): deleted and expired rows never stall a client, and unread / archive /
unarchive reach every socket of the user on every node, from the WebSocket, HTTP and
plain SQL. Two real nodes, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from app import schema
from herald_dev.rawws import read_notifications, stalled_client
from tests.conftest import API_KEY, insert, token_for
from tests.helpers import WsClient, call, metric, wait_for
from tests.proxy import PgProxy


async def insert_many(sql: asyncpg.Connection, user: str, count: int, **fields: Any) -> list[Any]:
    """``count`` rows for ``user`` in one statement; returns their (id, seq) records."""
    return list(await sql.fetch(
        "INSERT INTO herald.notifications (user_id, title, category, expires_at) "
        "SELECT $1, 'n' || g, $3, $4 FROM generate_series(1, $2) g ORDER BY g "
        "RETURNING id, seq", user, count, fields.get("category"), fields.get("expires_at")))


async def seqs_of(client: WsClient, count: int, timeout: float = 10.0) -> list[int]:
    return [f["seq"] for f in await client.notifications(count, timeout=timeout)]


# --- holes never stall ------------------------------------------------------------------


async def test_resume_over_deleted_rows_then_live(make_node, clients, sql, user) -> None:
    """The erasure request: a client saw 1-3, rows 4-7 are deleted; resuming with
    last_seq 3 it gets 8, 9, 10, then live rows, on another node."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    first = await clients(node_a.port)
    await first.hello(token_for(user))
    await insert_many(sql, user, 3)
    assert await seqs_of(first, 3) == [1, 2, 3]
    first.close()
    await insert_many(sql, user, 7)
    await sql.execute("DELETE FROM herald.notifications WHERE user_id = $1 "
                      "AND seq BETWEEN 4 AND 7", user)

    resumed = await clients(node_b.port)
    welcome = await resumed.hello(token_for(user), last_seq=3)
    assert welcome["last_seq"] == 10 and welcome["unread"] == 6
    assert await seqs_of(resumed, 3) == [8, 9, 10]
    await insert(sql, user, "after the erasure")
    (live,) = await resumed.notifications(1)
    assert live["seq"] == 11 and live["title"] == "after the erasure"


async def test_a_row_deleted_in_its_own_transaction_does_not_stall_the_socket(
    make_node, clients, sql, user
) -> None:
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    a, b = await clients(node_a.port), await clients(node_b.port)
    for client in (a, b):
        await client.hello(token_for(user))
    await insert(sql, user, "one")
    for client in (a, b):
        assert await seqs_of(client, 1) == [1]
    async with sql.transaction():  # its NOTIFY still goes out at COMMIT
        row = await insert(sql, user, "gone before anyone saw it")
        await sql.execute("DELETE FROM herald.notifications WHERE id = $1", row["id"])
    await insert(sql, user, "three")
    for client in (a, b):
        (frame,) = await client.notifications(1)
        assert (frame["seq"], frame["title"]) == (3, "three")


async def test_all_rows_deleted_then_a_new_one_reaches_an_old_cursor(
    make_node, clients, sql, user
) -> None:
    """Seqs never restart: the counter survives the deletion of every row, and a
    browser still holding cursor 5 (or a page that saw nothing, cursor 0) gets seq 6."""
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    await insert_many(sql, user, 5)
    await sql.execute("DELETE FROM herald.notifications WHERE user_id = $1", user)
    old = await clients(node_a.port)
    welcome = await old.hello(token_for(user), last_seq=5)
    assert welcome["last_seq"] == 5 and welcome["unread"] == 0
    empty_page = await clients(node_b.port)
    await empty_page.hello(token_for(user), last_seq=0)
    await old.sync()
    await empty_page.sync()
    row = await insert(sql, user, "after everything was deleted")
    assert row["seq"] == 6
    for client in (old, empty_page):
        (frame,) = await client.notifications(1)
        assert frame["seq"] == 6 and frame["id"] == row["id"]


@pytest.fixture(params=["direct", "relayed"])
async def delivery_mode(request, make_database) -> dict[str, Any]:
    """Node settings and database for both ways rows are announced: each commit's own
    NOTIFY, or the relay (threshold 0, on a database of its own: the lease is global)."""
    if request.param == "direct":
        return {}
    url = make_database()
    await asyncio.to_thread(schema.upgrade, url)
    return {"relay_threshold": 0.0, "database_url": url}


async def test_deletes_racing_live_delivery_and_a_resume(
    make_node, clients, delivery_mode, user
) -> None:
    """300 inserts for one user from 3 writers while another task deletes random rows
    of that user; one client stays connected, another leaves halfway and resumes on the
    other node. Each receives strictly increasing seqs, each at most once, and every
    row that survived; a client starting afterwards gets exactly the survivors."""
    node_a = await make_node("node-a", **delivery_mode)
    node_b = await make_node("node-b", **delivery_mode)
    database_url = delivery_mode.get("database_url") or node_a.database_url
    if delivery_mode:
        relays = [n.relay for n in (node_a, node_b)]
        await wait_for(lambda: any(r is not None and r.batched for r in relays), timeout=10)
    sql = await asyncpg.connect(database_url)
    steady = await clients(node_a.port)
    await steady.hello(token_for(user), last_seq=0)
    mover = await clients(node_a.port)
    await mover.hello(token_for(user), last_seq=0)
    pool = await asyncpg.create_pool(database_url, min_size=4, max_size=4)
    done = asyncio.Event()
    deleted: set[int] = set()
    rng = random.Random(7)

    async def writer(w: int) -> None:
        for i in range(100):
            await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                               "VALUES ($1, $2)", user, f"w{w}-{i}")

    async def deleter() -> None:
        while not done.is_set():
            newest = await pool.fetchval("SELECT coalesce(max(seq), 0) FROM "
                                         "herald.notifications WHERE user_id = $1", user)
            victims = rng.sample(range(1, newest + 1), min(3, newest)) if newest else []
            gone = await pool.fetch("DELETE FROM herald.notifications WHERE user_id = $1 "
                                    "AND seq = ANY($2::bigint[]) RETURNING seq", user, victims)
            deleted.update(r["seq"] for r in gone)
            await asyncio.sleep(0.005)

    received: dict[str, list[int]] = {"steady": [], "mover": []}

    async def collect(name: str, client: WsClient, until: int | None = None) -> WsClient:
        while True:
            frame = await client.recv(timeout=5)
            assert frame is not None
            if frame["type"] == "notification":
                received[name].append(frame["seq"])
                if until is not None and len(received[name]) >= until:
                    return client

    try:
        deleting = asyncio.create_task(deleter())
        writing = asyncio.gather(*(writer(w) for w in range(3)))
        await collect("mover", mover, until=20)
        mover.close()
        await asyncio.sleep(0.05)
        moved = await clients(node_b.port)
        await moved.hello(token_for(user), last_seq=received["mover"][-1])
        readers = [asyncio.create_task(collect("steady", steady)),
                   asyncio.create_task(collect("mover", moved))]
        await writing
        done.set()
        await deleting
        survivors = [r["seq"] for r in await sql.fetch(
            "SELECT seq FROM herald.notifications WHERE user_id = $1 ORDER BY seq", user)]

        def complete() -> bool:
            return all(set(survivors) <= set(seqs) for seqs in received.values())

        for _ in range(200):
            if complete():
                break
            await asyncio.sleep(0.05)
        for task in readers:
            task.cancel()
    finally:
        await pool.close()
        await sql.close()
    assert len(deleted) > 20 and len(survivors) + len(deleted) == 300
    for name, seqs in received.items():
        assert seqs == sorted(set(seqs)), f"{name}: duplicate or out of order"
        assert set(survivors) <= set(seqs), f"{name}: missing {set(survivors) - set(seqs)}"
        assert set(seqs) <= set(range(1, 301))
    late = await clients(node_b.port)
    await late.hello(token_for(user), last_seq=0)
    assert await seqs_of(late, len(survivors)) == survivors
    await late.expect_silence(0.3)


async def test_catch_up_after_bus_loss_skips_what_was_deleted_meanwhile(
    make_node, clients, sql, database_url, user
) -> None:
    """The LISTEN connection hangs while rows come and some go: the catch-up after it
    reconnects delivers the survivors, in order, and live delivery goes on."""
    proxy = PgProxy(database_url)
    await proxy.start()
    try:
        node = await make_node("node-a", bus_ping_interval=0.3, database_url=proxy.url)
        client = await clients(node.port)
        await client.hello(token_for(user))
        await client.sync()
        (bus,) = proxy.links(lambda link: b":bus" in link.startup)
        bus.frozen = True
        await insert_many(sql, user, 10)
        await sql.execute("DELETE FROM herald.notifications WHERE user_id = $1 "
                          "AND seq IN (1, 2, 5, 6, 7, 10)", user)
        assert await seqs_of(client, 4) == [3, 4, 8, 9]
        assert node.bus.reconnects == 1
        await insert(sql, user, "live again")
        assert await seqs_of(client, 1) == [11]
        bus.cut()
    finally:
        await proxy.stop()


# --- expiry ---------------------------------------------------------------------------


async def test_a_row_that_expires_while_its_user_is_offline_is_not_replayed(
    make_node, clients, sql, user
) -> None:
    node = await make_node()
    soon = datetime.now(timezone.utc) + timedelta(seconds=1)
    await insert(sql, user, "kept")
    await insert_many(sql, user, 1, expires_at=soon)
    await insert(sql, user, "also kept")
    await asyncio.sleep(1.3)
    client = await clients(node.port)
    welcome = await client.hello(token_for(user))
    assert welcome["unread"] == 2 and welcome["last_seq"] == 3
    frames = await client.notifications(2)
    assert [f["seq"] for f in frames] == [1, 3]
    await client.expect_silence(0.3)
    code, body = await call(node.port, "GET", "/api/notifications", token=token_for(user))
    assert code == 200 and [n["seq"] for n in body["notifications"]] == [3, 1]
    assert body["unread"] == 2


async def test_an_expired_row_is_never_pushed_live(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    await insert_many(sql, user, 1, expires_at=past)
    await insert_many(sql, user, 1, expires_at=later, category="orders")
    (frame,) = await client.notifications(1)
    assert frame["seq"] == 2 and frame["category"] == "orders"
    assert frame["expires_at"] == later.isoformat().replace("+00:00", "Z")
    assert frame["archived"] is False
    await client.nothing_before_sentinel(sql, user)


# --- unread, archive, unarchive: every interface, every node -----------------------------

KINDS = ["read", "unread", "archive", "unarchive"]


async def _prepare(sql: asyncpg.Connection, user: str, kind: str) -> list[int]:
    """Three rows; the first is put in the state ``kind`` changes it *from*."""
    ids = [r["id"] for r in await insert_many(sql, user, 3)]
    if kind == "unread":
        await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1", ids[0])
    if kind == "unarchive":
        await sql.execute("UPDATE herald.notifications SET archived_at = now() "
                          "WHERE id = $1", ids[0])
    return ids


# After the change of ids[0], how many of the three rows count as unread.
UNREAD_AFTER = {"read": 2, "unread": 3, "archive": 2, "unarchive": 3}


async def _apply(kind: str, interface: str, ids: list[int], user: str, node_b: Any,
                 sql: asyncpg.Connection, clients: Any) -> None:
    if interface == "ws":
        other = await clients(node_b.port)
        await other.hello(token_for(user), last_seq=3)
        await other.send({"type": kind, "ids": [ids[0]]})
    elif interface == "http":
        code, body = await call(node_b.port, "POST", f"/api/notifications/{kind}",
                                token=token_for(user), body={"ids": [ids[0]]})
        assert code == 200 and body == {"updated": 1, "unread": UNREAD_AFTER[kind]}
    else:
        column, value = {"read": ("read_at", "now()"), "unread": ("read_at", "NULL"),
                         "archive": ("archived_at", "now()"),
                         "unarchive": ("archived_at", "NULL")}[kind]
        await sql.execute(f"UPDATE herald.notifications SET {column} = {value} "
                          "WHERE id = $1", ids[0])


@pytest.mark.parametrize("interface", ["ws", "http", "sql"])
@pytest.mark.parametrize("kind", KINDS)
async def test_each_change_from_each_interface_reaches_the_other_node(
    make_node, clients, sql, user, kind, interface
) -> None:
    node_a, node_b = await make_node("node-a"), await make_node("node-b")
    ids = await _prepare(sql, user, kind)
    watcher = await clients(node_a.port)
    await watcher.hello(token_for(user), last_seq=3)
    await watcher.sync()
    await _apply(kind, interface, ids, user, node_b, sql, clients)
    frame = await watcher.recv()
    assert frame == {"type": kind, "ids": [ids[0]], "unread": UNREAD_AFTER[kind]}
    state = await sql.fetchrow("SELECT read_at, archived_at FROM herald.notifications "
                               "WHERE id = $1", ids[0])
    column = "read_at" if kind in ("read", "unread") else "archived_at"
    assert (state[column] is not None) == (kind in ("read", "archive"))
    await watcher.expect_silence(0.3)  # once, and nothing else


async def test_changes_ignore_other_users_rows(make_node, clients, sql, user) -> None:
    node = await make_node()
    mine = (await insert(sql, user, "mine"))["id"]
    theirs = (await insert(sql, user + "-x", "theirs"))["id"]
    for kind in ("archive", "read"):
        code, body = await call(node.port, "POST", f"/api/notifications/{kind}",
                                token=token_for(user), body={"ids": [theirs]})
        assert code == 200 and body["updated"] == 0
    assert await sql.fetchval("SELECT archived_at IS NULL AND read_at IS NULL FROM "
                              "herald.notifications WHERE id = $1", theirs)
    code, body = await call(node.port, "POST", "/api/notifications/archive",
                            token=token_for(user), body={"ids": [mine, theirs]})
    assert body == {"updated": 1, "unread": 0}


@pytest.mark.parametrize("body", [{"all": True}, {"ids": []}, {"ids": ["1"]}, {}, [1],
                                  {"ids": [1], "all": True}])
async def test_bad_change_requests_are_refused(make_node, user, body) -> None:
    node = await make_node()
    code, answer = await call(node.port, "POST", "/api/notifications/unarchive",
                              token=token_for(user), body=body)
    assert code == 400 and answer["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("frame", [
    {"type": "archive", "all": True}, {"type": "unread", "ids": []},
    {"type": "unarchive", "ids": [0]}, {"type": "archive", "ids": [1], "extra": 1}])
async def test_bad_change_frames_close_with_4400(make_node, clients, user, frame) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.send(frame)
    code, seen = await client.closed()
    assert code == 4400 and seen[-1]["type"] == "error" and seen[-1]["code"] == "malformed"


async def test_read_all_names_the_seq_it_covered(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await insert_many(sql, user, 4)
    await client.notifications(4)
    await client.send({"type": "read", "all": True})
    assert await client.recv() == {"type": "read", "ids": [], "unread": 0, "all": True,
                                   "seq": 4}


async def test_forged_lifecycle_payloads_change_nothing(make_node, clients, sql, user) -> None:
    """Anyone may NOTIFY on the channel: an event is pushed only if the table confirms
    that the transaction it names made that change; a malformed one is refused and
    counted. Claims that merely match the rows' state (fresh rows are unread and not
    archived) are not enough."""
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    ids = [r["id"] for r in await insert_many(sql, user, 2)]
    await client.notifications(2)
    theirs = (await insert(sql, user + "-x", "theirs"))["id"]
    await sql.execute("UPDATE herald.notifications SET read_at = now(), archived_at = now() "
                      "WHERE id = $1", theirs)
    real_x = await sql.fetchval("SELECT archive_xid FROM herald.notifications WHERE id = $1",
                                theirs)
    await client.sync()
    before = await metric(node.port, 'herald_refused_total{reason="bus_payload"}')
    forged = [
        {"k": "unread", "u": user, "ids": ids, "x": 1},  # true of the rows, never happened
        {"k": "unarchive", "u": user, "ids": ids, "x": real_x},
        {"k": "read", "u": user, "ids": ids, "x": real_x},  # not read
        {"k": "archive", "u": user, "ids": [theirs], "x": real_x},  # not this user's
        {"k": "read", "u": user, "all": True, "seq": 2, "x": real_x},  # rows are unread
    ]
    malformed = [
        {"k": "unarchive", "u": user, "x": 5}, {"k": "archive", "u": user, "ids": [], "x": 5},
        {"k": "unread", "u": user, "ids": [1], "all": True, "x": 5},
        {"k": "archive", "u": "", "ids": [1], "x": 5}, {"k": "read", "u": user, "all": True},
        {"k": "unread", "u": user, "ids": [-1], "x": 5}, {"k": "unread", "u": user, "ids": [1]},
        {"k": "unread", "u": user, "ids": [1], "x": "5"},
    ]
    for payload in forged + malformed:
        await sql.execute("SELECT pg_notify('herald', $1)", json.dumps(payload))
    await client.expect_silence(0.7)
    after = await metric(node.port, 'herald_refused_total{reason="bus_payload"}')
    assert after - before == len(malformed)
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications WHERE user_id = $1 "
                              "AND read_at IS NULL AND archived_at IS NULL", user) == 2
    await sql.execute("UPDATE herald.notifications SET archived_at = now() WHERE id = $1",
                      ids[1])  # a real change still gets through
    assert await client.recv() == {"type": "archive", "ids": [ids[1]], "unread": 1}


async def test_a_change_undone_before_it_is_pushed_is_not_pushed_wrongly(
    make_node, clients, sql, user
) -> None:
    """read then unread in one transaction: PostgreSQL may fold the NOTIFYs, and the
    node checks each against the table, so the sockets end where the row is: unread."""
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    (row,) = await insert_many(sql, user, 1)
    await client.notifications(1)
    async with sql.transaction():
        await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1",
                          row["id"])
        await sql.execute("UPDATE herald.notifications SET read_at = NULL WHERE id = $1",
                          row["id"])
    frame = await client.recv()
    assert frame == {"type": "unread", "ids": [row["id"]], "unread": 1}
    await client.expect_silence(0.3)


# --- the counts, the history, the publish API -------------------------------------------


async def test_unread_counts_leave_out_archived_and_expired_rows(
    make_node, clients, sql, user
) -> None:
    node = await make_node()
    ids = [r["id"] for r in await insert_many(sql, user, 5)]
    await sql.execute("UPDATE herald.notifications SET archived_at = now() WHERE id = $1",
                      ids[0])
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1", ids[1])
    await sql.execute("UPDATE herald.notifications SET expires_at = now() - interval '1 s' "
                      "WHERE id = $1", ids[2])
    client = await clients(node.port)
    assert (await client.hello(token_for(user)))["unread"] == 2
    code, body = await call(node.port, "GET", "/api/notifications", token=token_for(user))
    assert body["unread"] == 2 and body["last_seq"] == 5
    assert [n["id"] for n in body["notifications"]] == [ids[4], ids[3], ids[1]]


async def test_history_filters_archived_and_category(make_node, sql, user) -> None:
    node = await make_node()
    orders = [r["id"] for r in await insert_many(sql, user, 3, category="orders")]
    news = [r["id"] for r in await insert_many(sql, user, 2, category="news")]
    await sql.execute("UPDATE herald.notifications SET archived_at = now() "
                      "WHERE id = ANY($1::bigint[])", [orders[0], news[0]])
    token = token_for(user)

    async def listed(query: str) -> list[int]:
        code, body = await call(node.port, "GET", "/api/notifications" + query, token=token)
        assert code == 200, body
        return [n["id"] for n in body["notifications"]]

    assert await listed("") == [news[1], orders[2], orders[1]]
    assert await listed("?archived=true") == [news[0], orders[0]]
    assert await listed("?category=orders") == [orders[2], orders[1]]
    assert await listed("?category=orders&archived=true") == [orders[0]]
    assert await listed("?category=none") == []
    _, body = await call(node.port, "GET", "/api/notifications?archived=1", token=token)
    item = body["notifications"][0]
    assert item["archived"] is True and item["archived_at"].endswith("Z")
    assert item["category"] == "news" and item["expires_at"] is None
    for bad in ("?archived=maybe", "?category=" + "c" * 65, "?archived=1&archived=0"):
        code, body = await call(node.port, "GET", "/api/notifications" + bad, token=token)
        assert code == 400 and body["error"]["code"] == "invalid_request"


async def test_publish_accepts_category_and_expires_at(make_node, clients, sql, user) -> None:
    node = await make_node()
    client = await clients(node.port)
    await client.hello(token_for(user))
    await client.sync()
    code, body = await call(node.port, "POST", "/api/notifications", token=API_KEY, body=[
        {"user_id": user, "title": "soon gone", "category": "flash",
         "expires_at": "2099-01-01T12:00:00+02:00"},
        {"user_id": user, "title": "naive means UTC", "expires_at": "2099-01-01T12:00:00"},
    ])
    assert code == 201, body
    frames = await client.notifications(2)
    assert frames[0]["category"] == "flash"
    assert frames[0]["expires_at"] == "2099-01-01T10:00:00Z"
    assert frames[1]["expires_at"] == "2099-01-01T12:00:00Z" and frames[1]["category"] is None
    for item, field in [({"category": ""}, "category"), ({"category": "c" * 65}, "category"),
                        ({"category": 5}, "category"), ({"expires_at": "tomorrow"}, "expires_at"),
                        ({"expires_at": 1700000000}, "expires_at")]:
        code, body = await call(node.port, "POST", "/api/notifications", token=API_KEY,
                                body={"user_id": user, "title": "x", **item})
        assert code == 400 and field in body["error"]["message"], (item, body)
    with pytest.raises(asyncpg.CheckViolationError, match="ck_notifications_category_length"):
        await sql.execute("INSERT INTO herald.notifications (user_id, title, category) "
                          "VALUES ($1, 'x', '')", user)


async def test_imports_may_set_created_at(sql, user) -> None:
    row = await sql.fetchrow("INSERT INTO herald.notifications (user_id, title, created_at) "
                             "VALUES ($1, 'from the old system', '2020-01-02T03:04:05Z') "
                             "RETURNING seq, created_at", user)
    assert row["seq"] == 1
    assert row["created_at"] == datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


# --- found in review: orders of events that used to lose or misplace a push -------------


@pytest.fixture
async def held_bus(make_node, database_url):
    """A node whose LISTEN connection can be held (bytes kept, delivered on release) or
    cut (bytes lost) through a proxy; the bus ping is slow, so holding is not a loss."""
    proxy = PgProxy(database_url)
    await proxy.start()
    node = await make_node("node-a", bus_ping_interval=30.0, database_url=proxy.url)
    (bus,) = proxy.links(lambda link: b":bus" in link.startup)
    yield node, bus, proxy
    await proxy.stop()


async def test_read_then_archive_both_reach_the_socket(held_bus, clients, sql, user) -> None:
    """The node sees "read" only after the row was also archived: the read still holds
    (each state has its own xid), so both pushes go out."""
    node, bus, _ = held_bus
    client = await clients(node.port)
    await client.hello(token_for(user))
    (row,) = await insert_many(sql, user, 1)
    await client.notifications(1)
    bus.frozen = True
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1", row["id"])
    await sql.execute("UPDATE herald.notifications SET archived_at = now() WHERE id = $1",
                      row["id"])
    bus.frozen = False
    assert await client.recv() == {"type": "read", "ids": [row["id"]], "unread": 0}
    assert await client.recv() == {"type": "archive", "ids": [row["id"]], "unread": 0}


async def test_read_all_then_one_unread_pushes_what_is_still_read(
    held_bus, clients, sql, user
) -> None:
    node, bus, _ = held_bus
    client = await clients(node.port)
    await client.hello(token_for(user))
    ids = [r["id"] for r in await insert_many(sql, user, 4)]
    await client.notifications(4)
    bus.frozen = True
    other = await clients(node.port)  # the HTTP/WS path works while the bus is held
    await other.hello(token_for(user), last_seq=4)
    await other.send({"type": "read", "all": True})
    await other.sync()
    await sql.execute("UPDATE herald.notifications SET read_at = NULL WHERE id = $1", ids[0])
    bus.frozen = False
    assert await client.recv() == {"type": "read", "ids": ids[1:], "unread": 1}
    assert await client.recv() == {"type": "unread", "ids": [ids[0]], "unread": 1}


async def test_changes_lost_with_the_bus_are_pushed_after_it_is_back(
    held_bus, clients, sql, user
) -> None:
    """The LISTEN connection dies holding announcements of a read and an archive: once
    it is back, the node pushes the rows' current state (and the missed row)."""
    node, bus, _ = held_bus
    client = await clients(node.port)
    await client.hello(token_for(user))
    ids = [r["id"] for r in await insert_many(sql, user, 3)]
    await client.notifications(3)
    await client.sync()
    bus.frozen = True
    await sql.execute("UPDATE herald.notifications SET read_at = now() WHERE id = $1", ids[0])
    await sql.execute("UPDATE herald.notifications SET archived_at = now() WHERE id = $1",
                      ids[1])
    await insert(sql, user, "while the bus was down")
    bus.cut()  # the held announcements are gone for good
    frames = [await client.recv(timeout=10) for _ in range(3)]
    assert frames[0]["type"] == "notification" and frames[0]["seq"] == 4
    assert frames[1] == {"type": "read", "ids": [ids[0]], "unread": 2}
    assert frames[2] == {"type": "archive", "ids": [ids[1]], "unread": 2}
    await client.expect_silence(0.3)
    assert node.bus.reconnects == 1


async def test_a_push_never_overtakes_the_replay_of_its_row(
    make_node, clients, sql, user
) -> None:
    """A row is archived while a joining session's replay is between its read of the
    table and its write to the socket: the archive push comes after the (older) row."""
    node = await make_node()
    (row,) = await insert_many(sql, user, 1)
    core = node.dispatcher
    assert core is not None
    store = core._store
    fetch = store.fetch_after  # the replay's read of the table

    async def slow_fetch(*args):  # type: ignore[no-untyped-def]
        store.fetch_after = fetch  # once
        rows = await fetch(*args)
        await sql.execute("UPDATE herald.notifications SET archived_at = now() "
                          "WHERE id = $1", row["id"])
        await asyncio.sleep(0.3)  # the archive's push is handled meanwhile
        return rows

    store.fetch_after = slow_fetch
    client = await clients(node.port)
    await client.hello(token_for(user), last_seq=0)
    first = await client.recv()
    assert first is not None and first["type"] == "notification"
    assert first["archived"] is False  # read before the archive
    assert await client.recv() == {"type": "archive", "ids": [row["id"]], "unread": 0}


async def test_a_client_past_the_mark_on_a_rounds_last_frame_is_resumed(
    make_node, sql, user
) -> None:
    """One row per round to a client that stopped reading, until its buffer passes the
    high-water mark on a round's last frame: once it reads again it gets every row,
    without any new insert to wake it up."""
    node = await make_node(max_pending_bytes=64 * 1024, slow_consumer_timeout=30.0)
    sock = await asyncio.to_thread(stalled_client, node.port, token_for(user))
    paused = node.metrics.replayed  # any resume after a pause is a replay from the cursor
    try:
        await asyncio.sleep(0.3)
        for i in range(250):  # 250 x 25 KB: past the kernel's buffers, then the mark
            await sql.execute(
                "INSERT INTO herald.notifications (user_id, title, body, data) VALUES "
                "($1, $2, repeat('x', 10000), jsonb_build_object('pad', repeat('y', 15000)))",
                user, f"n{i}")
            await asyncio.sleep(0.01)
        seqs = await asyncio.to_thread(read_notifications, sock, 250)
    finally:
        sock.close()
    assert seqs == list(range(1, 251))
    assert paused._value.get() > 0  # it did pause, and was resumed from its cursor
