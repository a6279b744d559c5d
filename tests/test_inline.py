"""Inline frames (revision 0008): a transaction's first row goes out, rendered, on a private
channel at COMMIT, and the node holding the user's socket sends it without a fetch.

The private channel's name is in ``herald_private.bus_key``, which only the owner (and roles it
grants) can read; frames on it are trusted as they stand, a frame on the public channel is
refused. Every row still gets its pointer on ``herald``, so a node that cannot read the
key, or one on older code, fetches as before."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from app import bus_payloads, db, shards
from app.bus import Bus
from app.store import Store
from tests.conftest import insert, listen, token_for
from tests.helpers import (
    frame_payload,
    listen_everywhere,
    metric,
    notification_frame,
    private_channel,
)


async def _private(url: str) -> tuple[asyncpg.Connection, "asyncio.Queue[dict[str, Any]]"]:
    """A LISTEN connection on the private channel (as the owner) and its parsed payloads;
    each also checks that the node's quick read of the user agrees with the full parse."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    conn = await db.connect(url, "herald-test-private")
    channel, key = await private_channel(conn)

    def heard(*args: Any) -> None:
        event = bus_payloads.parse_frame_event(args[-1], key)
        assert bus_payloads.frame_event_user(args[-1]) == event.user
        queue.put_nowait(json.loads(args[-1][bus_payloads.MAC_HEX:]))

    await listen_everywhere(conn, channel, heard)
    return conn, queue


async def _drained(queue: "asyncio.Queue[Any]", wait: float = 0.4) -> list[Any]:
    await asyncio.sleep(wait)
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def test_the_frame_is_the_fetched_frame_as_the_transaction_leaves_the_row(fresh) -> None:
    """The SQL contract, no node running: one frame per transaction (its first row),
    byte for byte what the fetch renders, sent at COMMIT from the row's final state;
    nothing for a row deleted again, expiring, rolled back, too big, or under the lease."""
    url, sql = fresh["url"], fresh["sql"]
    private, frames = await _private(url)
    public, pointers = await listen(url)
    pool = await db.create_pool(url, "herald-test-store", min_size=1, max_size=2)
    try:
        row = await sql.fetchrow(
            "INSERT INTO herald.notifications (user_id, title, body, data, link, category) "
            "VALUES ('alice', $1, $2, $3::jsonb, '/orders/1', 'orders') RETURNING id, seq",
            'Hé "quoted" \\ ✓', "line\nnext", {"n": [1, {"x": None}], "s": "é"})
        (frame,) = await _drained(frames)
        fetched = await Store(pool).fetch_after({"alice": 0})
        assert frame["f"] == fetched[0]["frame"]  # the same text, not just the same JSON
        assert (frame["u"], frame["s"]) == ("alice", row["seq"])
        assert abs(frame["t"] - fetched[0]["created_at"].timestamp()) < 1e-5
        assert [json.loads(p) for p in await _drained(pointers)] == [
            {"k": "new", "u": {"alice": row["seq"]}}]

        async with sql.transaction():  # the state at COMMIT: read and archived by then
            row = await insert(sql, "alice", "read at once")
            await sql.execute("UPDATE herald.notifications SET read_at = now(), "
                              "archived_at = now() WHERE id = $1", row["id"])
        (frame,) = await _drained(frames)
        inner = json.loads(frame["f"])
        assert (inner["seq"], inner["read"], inner["archived"]) == (row["seq"], True, True)

        async with sql.transaction():  # deleted again: only the pointer says anything
            row = await insert(sql, "alice", "gone")
            await sql.execute("DELETE FROM herald.notifications WHERE id = $1", row["id"])
        assert await _drained(frames) == []
        assert {"k": "new", "u": {"alice": row["seq"]}} in [
            json.loads(p) for p in await _drained(pointers, 0)]

        async with sql.transaction():  # several rows: the first one only
            await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                              "SELECT 'u' || i, 't' FROM generate_series(1, 50) AS i")
            await insert(sql, "bob", "second statement")
        assert [(f["u"], f["s"]) for f in await _drained(frames)] == [("u1", 1)]

        await sql.execute("INSERT INTO herald.notifications (user_id, title, expires_at) "
                          "VALUES ('alice', 'expires', now() + interval '1 day')")
        async with sql.transaction():  # given an expiry before COMMIT: as if at insert
            row = await insert(sql, "alice", "expires later")
            await sql.execute("UPDATE herald.notifications SET expires_at = now() + "
                              "interval '1 day' WHERE id = $1", row["id"])
        await insert(sql, "alice", "too big for a NOTIFY", body="x" * 8000)
        tx = sql.transaction()
        await tx.start()
        await insert(sql, "alice", "rolled back")
        await tx.rollback()
        await sql.execute("UPDATE herald.relay SET batched_until = now() + interval '1 hour'")
        await insert(sql, "alice", "relayed")
        assert await _drained(frames) == []
    finally:
        await pool.close()
        await private.close()
        await public.close()


async def test_only_trusted_roles_can_read_the_channel(fresh) -> None:
    """A writer with the grants README lists (herald_writer), and even SELECT on every
    table of schema herald, cannot read the key, so cannot listen to frames (which carry titles and
    bodies) or forge them, nor attach the owner-run trigger function to a table of its
    own; its Bus listens to pointers only. Its inserts still send frames (the trigger
    runs as the owner)."""
    url, sql = fresh["url"], fresh["sql"]
    name = f"herald_t_{uuid.uuid4().hex[:8]}"
    await sql.execute(f"CREATE ROLE {name} LOGIN")
    await sql.execute(f"GRANT herald_writer TO {name}")
    await sql.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA herald TO {name}")
    await sql.execute(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
    database = await sql.fetchval("SELECT current_database()")
    await sql.execute(f"GRANT CONNECT ON DATABASE {database} TO {name}")
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    limited_url = urlunsplit(parts._replace(netloc=f"{name}@{host}"))

    limited = await db.connect(limited_url, "herald-test-limited")
    heard: list[tuple[str, bool]] = []
    bus = Bus(limited_url, "herald", lambda p, key: heard.append((p, key is not None)),
              lambda *_: None)
    owner_heard: list[tuple[str, bool]] = []
    owner_bus = Bus(url, "herald", lambda p, key: owner_heard.append((p, key is not None)),
                    lambda *_: None)
    private, frames = await _private(url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await limited.fetchval("SELECT channel FROM herald_private.bus_key")
        await limited.execute(f"CREATE TABLE {name}.t (id bigint)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="notify_frame"):
            await limited.execute(f"CREATE TRIGGER t AFTER INSERT ON {name}.t FOR EACH ROW "
                                  "EXECUTE FUNCTION herald.notify_frame()")
        for listening in (bus, owner_bus):  # carol's shard, as for a local user of hers
            listening.want(shards.shard_of("carol"))
        await bus.start()
        await owner_bus.start()
        row = await insert(limited, "carol", "from the limited writer")
        (frame,) = await _drained(frames)
        assert (frame["u"], frame["s"]) == ("carol", row["seq"])
        assert [trusted for _, trusted in heard] == [False]
        assert sorted(trusted for _, trusted in owner_heard) == [False, True]
    finally:
        await bus.stop()
        await owner_bus.stop()
        await private.close()
        await limited.close()
        await sql.execute(f"DROP OWNED BY {name}")
        await sql.execute(f"DROP ROLE {name}")


async def test_a_frame_is_sent_as_it_stands_only_from_the_private_channel(
    make_node, clients, sql, user
) -> None:
    """What arrives on the private channel is pushed without a fetch (here: a seq the table
    does not have); the same payload on the public channel is refused and pushes nothing."""
    node = await make_node("node-a")
    client = await clients(node.port)
    await client.hello(token_for(user))
    first = await insert(sql, user, "real")
    (got,) = await client.notifications(1)
    assert got["seq"] == first["seq"]
    frames_before = await metric(node.port, 'herald_bus_events_total{kind="frame"}')
    assert frames_before >= 1  # the real row came inline

    fake = notification_frame(2, "only on the bus")
    channel, key = await private_channel(sql)
    payload = frame_payload(user, fake, key)
    refused = await metric(node.port, 'herald_refused_total{reason="bus_payload"}')
    await sql.execute("SELECT pg_notify('herald', $1)", payload[bus_payloads.MAC_HEX:])
    await client.expect_silence(0.5)
    assert await metric(node.port, 'herald_refused_total{reason="bus_payload"}') == refused + 1

    await sql.execute("SELECT pg_notify($1, $2)", channel, payload)
    assert await client.notifications(1) == [fake]
    for bad in ({"k": "frame", "u": user, "s": 3, "t": 0}, {"k": "new", "u": {user: 3}}):
        await sql.execute("SELECT pg_notify($1, $2)", channel, json.dumps(bad))
    await client.expect_silence(0.5)
    assert await metric(node.port, 'herald_refused_total{reason="bus_payload"}') == refused + 3


async def test_a_frame_that_does_not_continue_the_cursor_waits_for_the_fetch(
    make_node, clients, sql, user
) -> None:
    """A frame is sent only on top of its predecessor (``seq - 1``): one that would skip a
    row is held back, and the fetch that follows sends what exists from the cursor."""
    node = await make_node("node-a")
    client = await clients(node.port)
    await client.hello(token_for(user))
    await insert(sql, user, "one")
    assert [f["seq"] for f in await client.notifications(1)] == [1]
    channel, key = await private_channel(sql)
    payload = frame_payload(user, notification_frame(3, "two ahead"), key)
    await sql.execute("SELECT pg_notify($1, $2)", channel, payload)
    await client.expect_silence(0.5)  # seq 2 was never sent: 3 may not jump it

    async with sql.transaction():  # seq 2 gets a pointer only; the frame of 3 comes along
        await insert(sql, user + "-other", "the transaction's first row")
        await insert(sql, user, "two")
        await sql.execute("SELECT pg_notify($1, $2)", channel, payload)
    (two,) = await client.notifications(1)
    assert (two["seq"], two["title"]) == (2, "two")
    await client.expect_silence(0.5)  # the frame of 3 was looked at before the fetch


async def test_frames_and_fetches_mix_without_gap_duplicate_or_reorder(
    make_node, clients, sql, user
) -> None:
    """Rows that are not their transaction's first (pointer only), rows deleted at once,
    and inline frames, interleaved on two nodes: every client sees the rows that remain,
    once, in order."""
    nodes = [await make_node("node-a"), await make_node("node-b")]
    socks = [await clients(n.port) for n in nodes]
    for client in socks:
        await client.hello(token_for(user))
    kept = []
    for i in range(60):
        if i % 3 == 0:
            async with sql.transaction():
                await insert(sql, user + "-other", "first row of the transaction")
                kept.append((await insert(sql, user, f"second {i}"))["seq"])
        elif i % 7 == 0:
            async with sql.transaction():
                row = await insert(sql, user, f"deleted {i}")
                await sql.execute("DELETE FROM herald.notifications WHERE id = $1", row["id"])
        else:
            kept.append((await insert(sql, user, f"inline {i}"))["seq"])
    for client in socks:
        got = await client.notifications(len(kept))
        assert [f["seq"] for f in got] == kept
        await client.expect_silence(0.3)


def test_the_quick_user_read_refuses_what_the_trigger_would_not_write() -> None:
    """Anything not shaped as the trigger writes it gets None, and then the strict parse
    (which refuses it, counted as bus_payload) instead of being dropped unseen."""
    mac = "0" * bus_payloads.MAC_HEX  # read before any check: the MAC is not looked at here
    good = mac + '{"k" : "frame", "u" : "al\\"ice", "s" : 1, "t" : 0, "f" : "{}"}'
    assert bus_payloads.frame_event_user(good) == 'al"ice'
    assert bus_payloads.frame_event_user(good[bus_payloads.MAC_HEX:]) is None  # no MAC in front
    for bad in ('{"k":"frame","u":"alice"}', '{"k" : "frame", "u" : 7, "s" : 1}',
                '{"k" : "other", "u" : "alice", "s" : 1, "t" : 0, "f" : "{}"}',
                '{"k" : "frame", "u" : "unterminated', "", "not json"):
        assert bus_payloads.frame_event_user(mac + bad) is None
