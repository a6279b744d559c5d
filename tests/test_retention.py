"""Retention (docs/operations.md "Retention"): `herald prune` and the nodes' own
passes delete old and expired rows in small batches while clients stay connected and
inserts keep flowing.

Each test takes a database of its own: pruning deletes rows of every user."""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import pytest

from tests.conftest import token_for
from tests.helpers import ROOT, clean_env, metric, wait_for


async def seed(sql: asyncpg.Connection, user: str, old: int, expired: int, recent: int) -> None:
    """``old`` rows created 40 days ago (an import), ``expired`` rows past their expiry,
    ``recent`` rows of today, interleaved by seq."""
    await sql.execute(
        """
        INSERT INTO herald.notifications (user_id, title, created_at, expires_at)
        SELECT $1, kind || ' ' || n,
               CASE kind WHEN 'old' THEN now() - interval '40 days' ELSE now() END,
               CASE kind WHEN 'expired' THEN now() - interval '1 minute' END
        FROM (SELECT 'old' AS kind, g AS n FROM generate_series(1, $2) g
              UNION ALL SELECT 'expired', g FROM generate_series(1, $3) g
              UNION ALL SELECT 'recent', g FROM generate_series(1, $4) g) AS s
        ORDER BY n, kind
        """, user, old, expired, recent)


async def counts(sql: asyncpg.Connection, user: str) -> dict[str, int]:
    rows = await sql.fetch("SELECT split_part(title, ' ', 1) AS kind, count(*) FROM "
                           "herald.notifications WHERE user_id = $1 GROUP BY 1", user)
    return {r["kind"]: r["count"] for r in rows}


async def test_seed_builds_what_it_says(fresh) -> None:
    await seed(fresh["sql"], "s", old=20, expired=10, recent=5)
    assert await counts(fresh["sql"], "s") == {"old": 20, "expired": 10, "recent": 5}


async def test_herald_prune_while_clients_stay_connected(fresh, clients) -> None:
    """`herald prune --older-than 30` in batches of 3 while 150 rows are inserted for the
    same user: the connected socket gets every new row once, in order; a client that
    keeps leaving and resuming from its cursor on the other node during the prune never
    gets a duplicate or a reordering and ends with every row that survived; the command
    says how many rows it deleted."""
    sql, user = fresh["sql"], "pruned-user"
    await seed(sql, user, old=60, expired=15, recent=10)
    node_a = await fresh["node"]("node-a")
    node_b = await fresh["node"]("node-b")
    newest = await sql.fetchval("SELECT max(seq) FROM herald.notifications")
    steady = await clients(node_a.port)
    await steady.hello(token_for(user), last_seq=newest)
    await steady.sync()

    env = clean_env(HERALD_DATABASE_URL=fresh["url"], HERALD_PRUNE_BATCH="3",
                    HERALD_PRUNE_PAUSE="0.05")
    prune = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "prune", "--older-than", "30", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    pruning = asyncio.create_task(prune.communicate())

    async def publish() -> None:
        for i in range(150):
            await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                              "VALUES ($1, $2)", user, f"live {i}")
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(publish())
    got: list[int] = []
    sessions = 0
    while not pruning.done() or not publishing.done() or sessions < 3:
        resumer = await clients(node_b.port)
        await resumer.hello(token_for(user), last_seq=got[-1] if got else 0)
        sessions += 1
        for _ in range(4):  # a few frames, then leave and come back
            try:
                frame = await resumer.recv(timeout=0.3)
            except asyncio.TimeoutError:
                break
            assert frame is not None
            if frame["type"] == "notification":
                got.append(frame["seq"])
        resumer.close()
    out, err = await pruning
    assert prune.returncode == 0, err.decode()
    assert out.decode().strip() == ("deleted 75 rows (60 created more than 30 days ago, "
                                    "15 expired)")
    assert await counts(sql, user) == {"recent": 10, "live": 150}

    live = await steady.notifications(150)
    assert [f["seq"] for f in live] == list(range(newest + 1, newest + 151))
    survivors = [r["seq"] for r in await sql.fetch(
        "SELECT seq FROM herald.notifications WHERE user_id = $1 ORDER BY seq", user)]
    last = await clients(node_b.port)
    await last.hello(token_for(user), last_seq=got[-1] if got else 0)
    while not set(survivors) <= set(got):
        frame = await last.recv(timeout=10)
        assert frame is not None
        if frame["type"] == "notification":
            got.append(frame["seq"])
    assert sessions > 3
    assert got == sorted(set(got))  # once each, in order, across every resume
    assert set(got) <= set(range(1, newest + 151))
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications "
                              "WHERE expires_at <= now()") == 0


async def test_prune_keeps_the_seq_counter(fresh) -> None:
    sql = fresh["sql"]
    await seed(sql, "gone", old=5, expired=0, recent=0)
    env = clean_env(HERALD_DATABASE_URL=fresh["url"])
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "prune", "--older-than", "0.5", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await done.communicate()
    assert out.decode().startswith("deleted 5 rows (5 created more than 0.5 days ago")
    assert await sql.fetchval("SELECT count(*) FROM herald.notifications") == 0
    seq = await sql.fetchval("INSERT INTO herald.notifications (user_id, title) "
                             "VALUES ('gone', 'back') RETURNING seq")
    assert seq == 6


async def test_without_an_age_prune_deletes_only_expired_rows(fresh) -> None:
    sql = fresh["sql"]
    await seed(sql, "mixed", old=4, expired=3, recent=2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "prune", env=clean_env(
            HERALD_DATABASE_URL=fresh["url"]), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().startswith("deleted 3 rows (3 expired; none")
    assert await counts(sql, "mixed") == {"old": 4, "recent": 2}


@pytest.mark.parametrize("days", ["0", "-3", "abc", "inf"])
async def test_prune_refuses_a_bad_age(fresh, days) -> None:
    await seed(fresh["sql"], "safe", old=2, expired=0, recent=0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "prune", f"--older-than={days}",
        env=clean_env(HERALD_DATABASE_URL=fresh["url"]), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "--older-than" in lines[0]
    assert await fresh["sql"].fetchval("SELECT count(*) FROM herald.notifications") == 2


async def test_nodes_prune_on_their_own_one_at_a_time(fresh, clients) -> None:
    """HERALD_RETENTION_DAYS on two nodes: the relay's leader deletes old and expired
    rows in batches; herald_pruned_total counts them on that node only; a socket on the
    other node keeps getting new rows."""
    sql = fresh["sql"]
    await seed(sql, "kept-busy", old=40, expired=12, recent=3)
    settings = dict(retention_days=30.0, prune_interval=0.2, prune_batch=9, prune_pause=0.0)
    a = await fresh["node"]("node-a", **settings)
    b = await fresh["node"]("node-b", **settings)
    leader = a if a.relay is not None and a.relay.leader else b
    other = b if leader is a else a
    client = await clients(other.port)
    await client.hello(token_for("kept-busy"), last_seq=1000)
    await client.sync()
    async def pruned() -> bool:
        return await counts(sql, "kept-busy") == {"recent": 3}

    await wait_for(pruned, timeout=20)
    assert await metric(leader.port, "herald_pruned_total") == 52
    assert await metric(other.port, "herald_pruned_total") == 0
    row = await sql.fetchrow("INSERT INTO herald.notifications (user_id, title) "
                             "VALUES ('kept-busy', 'still here') RETURNING seq")
    (frame,) = await client.notifications(1)
    assert frame["seq"] == row["seq"]


async def test_retention_off_deletes_nothing(fresh) -> None:
    sql = fresh["sql"]
    await seed(sql, "forever", old=3, expired=2, recent=1)
    node = await fresh["node"]("node-a", prune_interval=0.1)
    await asyncio.sleep(0.5)
    assert node.pruner is not None and node.pruner.passes == 0
    assert await counts(sql, "forever") == {"old": 3, "expired": 2, "recent": 1}
