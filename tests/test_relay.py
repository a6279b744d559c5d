"""The relay (revisions 0003 and 0005, app/relay.py): above a threshold the writers stop notifying
and one elected node announces their rows, with no loss, duplicate or reordering.

Each test takes a database of its own, since there is one relay lease per database."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from app import bus_payloads, db, protocol, shards
from app.relay import SYNC_PAYLOAD
from tests.conftest import insert, listen, token_for
from tests.helpers import wait_for


async def test_lease_moves_notify_from_the_commit_to_relay_poll(fresh) -> None:
    """The SQL contract alone, no node running: under a lease an INSERT leaves a pointer
    and sends nothing; relay_poll sees the pointer only once its transaction commits,
    announces it exactly once, and reports the id sequence's position."""
    sql = fresh["sql"]
    listener, heard = await listen(fresh["url"])
    poller = await db.connect(fresh["url"], "herald-test-poller")
    try:
        direct = await insert(sql, "alice", "direct")
        assert json.loads(await asyncio.wait_for(heard.get(), 5)) == {
            "k": "new", "u": {"alice": direct["seq"]}}
        assert await sql.fetchval("SELECT count(*) FROM herald.relay_pending") == 0

        await sql.execute("UPDATE herald.relay SET batched_until = now() + interval '1 hour'")
        async with sql.transaction():
            await insert(sql, "alice", "relayed 1")
            await insert(sql, "bob", "relayed 2")
            await insert(sql, "alice", "relayed 3")
            uncommitted = await poller.fetchrow("SELECT * FROM herald.relay_poll()")
            assert uncommitted["announced"] == 0  # not visible before COMMIT
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(heard.get(), 0.5)  # the commit sent nothing
        assert await sql.fetchval("SELECT count(*) FROM herald.relay_pending") == 3

        poll = await poller.fetchrow("SELECT announced, last_id FROM herald.relay_poll()")
        assert poll["announced"] == 2 and poll["last_id"] == direct["id"] + 3
        # One pointer per shard (revision 0011): alice's and bob's are apart.
        assert shards.shard_of("alice") != shards.shard_of("bob")
        announced = [json.loads(await asyncio.wait_for(heard.get(), 5)) for _ in range(2)]
        assert sorted(announced, key=lambda p: list(p["u"])) == [
            {"k": "new", "u": {"alice": 3}}, {"k": "new", "u": {"bob": 1}}]
        again = await poller.fetchrow("SELECT announced FROM herald.relay_poll()")
        assert again["announced"] == 0  # taken once: nothing left to announce
        assert await sql.fetchval("SELECT count(*) FROM herald.relay_pending") == 0

        tx = sql.transaction()  # a rolled-back insert leaves no pointer behind
        await tx.start()
        await insert(sql, "carol", "rolled back")
        await tx.rollback()
        assert (await poller.fetchrow("SELECT * FROM herald.relay_poll()"))["announced"] == 0

        await sql.execute("UPDATE herald.relay SET batched_until = now() - interval '1 s'")
        after = await insert(sql, "alice", "lease over")
        assert json.loads(await asyncio.wait_for(heard.get(), 5)) == {
            "k": "new", "u": {"alice": after["seq"]}}
    finally:
        await listener.close()
        await poller.close()


async def test_fast_writers_are_relayed_in_order(fresh, clients) -> None:
    """Threshold 0: the relay batches at once. 3 users x 40 rows from 8 concurrent
    writers all arrive, in seq order, announced by the relay."""
    node = await fresh["node"]("node-a", relay_threshold=0.0)
    await wait_for(lambda: node.relay is not None and node.relay.batched, timeout=10)
    users = ["r0", "r1", "r2"]
    socks = [await clients(node.port) for _ in users]
    for sock, user in zip(socks, users, strict=True):
        await sock.hello(token_for(user))
    pool = await asyncpg.create_pool(fresh["url"], min_size=8, max_size=8)
    try:
        async def writer(k: int) -> None:
            for i in range(15):
                async with pool.acquire() as conn:
                    await insert(conn, users[(k + i) % 3], f"w{k}-{i}")
        await asyncio.gather(*(writer(k) for k in range(8)))
    finally:
        await pool.close()
    for sock in socks:
        frames = await sock.notifications(40)
        assert [f["seq"] for f in frames] == list(range(1, 41))
    # The relay announced them and took every pointer the writers left.
    assert node.relay is not None and node.relay.announced > 0
    assert await fresh["sql"].fetchval("SELECT count(*) FROM herald.relay_pending") == 0


async def test_transaction_stamped_before_the_lease_ended_is_still_delivered(
        fresh, clients) -> None:
    node = await fresh["node"]("node-a", relay_threshold=0.0)
    relay = node.relay
    assert relay is not None
    await wait_for(lambda: relay.batched, timeout=10)
    sock = await clients(node.port)
    await sock.hello(token_for("late"))
    other = await clients(node.port)
    await other.hello(token_for("early"))

    slow = await db.connect(fresh["url"], "herald-test-slow")
    try:
        tx = slow.transaction()
        await tx.start()
        await insert(slow, "late", "stamped while batched")
        relay.threshold = 1e12  # calm: the relay ends the lease after calm_seconds
        relay.calm_seconds = 0.2
        await wait_for(lambda: not relay.batched, timeout=10)
        await insert(fresh["sql"], "early", "after the lease")
        assert await fresh["sql"].fetchval(  # notified at its own COMMIT: no pointer
            "SELECT count(*) FROM herald.relay_pending WHERE user_id = 'early'") == 0
        (frame,) = await other.notifications(1)
        assert frame["title"] == "after the lease"
        await tx.commit()
    finally:
        await slow.close()
    (frame,) = await sock.notifications(1)
    assert frame["title"] == "stamped while batched" and frame["seq"] == 1


async def test_a_new_leader_syncs_what_the_dead_one_left(fresh, clients) -> None:
    """Kill the leader's connection while rows stamped for it are unannounced: another
    election happens, its sync makes every node re-read, and nothing is lost."""
    a = await fresh["node"]("node-a", relay_threshold=0.0)
    b = await fresh["node"]("node-b", relay_threshold=0.0)
    relays = [a.relay, b.relay]
    await wait_for(lambda: any(r is not None and r.batched for r in relays), timeout=10)
    leader = next(s for s in (a, b) if s.relay is not None and s.relay.leader)
    elections = sum(r.elections for r in relays if r is not None)
    socks = {}
    for server in (a, b):
        socks[server.config.node] = sock = await clients(server.port)
        await sock.hello(token_for(f"user-{server.config.node}"))

    sql = fresh["sql"]
    # Freeze the leader (no more polls), kill its session, then write while the lease
    # still says "batched": these rows reach nobody until the next leader's sync.
    assert leader.relay is not None
    leader.relay.threshold = 1e12
    await sql.execute("UPDATE herald.relay SET batched_until = now() + interval '1 hour'")
    await sql.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = $1", f"herald:{leader.config.node}:relay")
    for i in range(5):
        for name in socks:
            await insert(sql, f"user-{name}", f"gap {i}")
    await wait_for(lambda: sum(r.elections for r in relays if r is not None) > elections,
                   timeout=15)
    for sock in socks.values():
        frames = await sock.notifications(5, timeout=15)
        assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5]
    await sql.execute("UPDATE herald.relay SET batched_until = '-infinity'")


def test_sync_is_the_only_new_bus_kind() -> None:
    assert bus_payloads.parse_bus_event(SYNC_PAYLOAD) == bus_payloads.SyncEvent()
    for payload in ('{"k":"sync","u":{"a":1}}', '{"k":"synced"}'):
        with pytest.raises(protocol.ProtocolError):
            bus_payloads.parse_bus_event(payload)


async def test_a_stopping_leader_ends_its_lease_cleanly(fresh) -> None:
    """Stopped while it polls every few milliseconds, the leader finishes the poll, ends
    the lease (writers notify directly at once) and stops without an error; five times
    over, to land in the middle of a poll."""
    sql = fresh["sql"]
    for i in range(5):
        node = await fresh["node"](f"node-{i}", relay_threshold=0.0)
        relay = node.relay
        assert relay is not None
        await wait_for(lambda relay=relay: relay.batched, timeout=10)
        assert await sql.fetchval("SELECT batched_until > now() FROM herald.relay")
        await asyncio.sleep(0.013 * i)
        await relay.stop()
        assert relay._task is not None and relay._task.done()
        assert relay._task.exception() is None
        assert await sql.fetchval("SELECT batched_until = '-infinity' FROM herald.relay")
