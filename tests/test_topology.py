"""Production topologies (issue 13): the pool through a real PgBouncer in transaction mode
with the bus on a direct URL; a bus through such a pooler refused at start; libpq
multi-host URLs everywhere; `herald status`; one-line pool warnings."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from typing import Any, AsyncIterator

import asyncpg
import pytest

from app import auth, db
from app.config import ConfigError
from app.server import HeraldServer
from bench.herald_load import until_delivered
from herald_dev.checker import Checker
from herald_dev.loadgen import Fleet, Publisher
from tests.conftest import SECRET, make_config
from tests.helpers import ROOT, clean_env
from tests.pgbouncer import PgBouncer

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
async def bouncer(database_url: str) -> AsyncIterator[PgBouncer]:
    b = PgBouncer(database_url)
    await b.start()
    yield b
    await b.stop()


async def test_pgbouncer_is_detected_and_a_direct_database_is_not(bouncer, database_url) -> None:
    assert await db.behind_transaction_pooler(bouncer.url)
    assert not await db.behind_transaction_pooler(database_url)


async def test_pgbouncer_is_detected_while_other_clients_are_busy(bouncer, database_url) -> None:
    """A node starting next to a busy one (heartbeats, session starts through the same
    PgBouncer) must still see the pooler: taken for a direct database, it caches
    prepared statements and every session start on it fails. And a direct database
    under the same load is never taken for a pooler."""
    async def busy(url: str, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(url, statement_cache_size=0)
        try:
            while not stop.is_set():
                async with conn.transaction():
                    await conn.execute("SELECT pg_sleep(0.002)")
                await conn.execute("SELECT 1")
        finally:
            await conn.close()

    for url, expected in ((bouncer.url, True), (database_url, False)):
        stop = asyncio.Event()
        workers = [asyncio.create_task(busy(url, stop)) for _ in range(12)]
        try:
            await asyncio.sleep(0.2)
            seen = [await db.behind_transaction_pooler(url) for _ in range(25)]
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert seen == [expected] * 25, (url, seen)


async def test_the_pool_through_pgbouncer_with_a_direct_bus_loses_nothing(
    bouncer: PgBouncer, database_url: str
) -> None:
    """Writers and the nodes' pools on PgBouncer (transaction mode), LISTEN and the relay
    on a direct connection: a publishing load arrives complete, once, in order."""
    nodes = [HeraldServer(make_config(node=name, bus_database_url=database_url),
                          bouncer.url) for name in ("node-a", "node-b")]
    for node in nodes:
        await node.start()
    checker = Checker()
    users = [f"pgb-{i}" for i in range(20)]
    fleet = Fleet([f"ws://127.0.0.1:{node.port}/ws" for node in nodes], users,
                  lambda u: auth.mint_token(SECRET, u, 3600), checker)
    # A backend writing through PgBouncer in transaction mode: no statement cache, each
    # statement in its transaction (PgBouncer 1.18 keeps only a transaction on a server).
    pool = await asyncpg.create_pool(bouncer.url, min_size=4, max_size=8,
                                     statement_cache_size=0)

    async def send(user: str, title: str) -> int:
        async with pool.acquire() as conn, conn.transaction():
            return int(await conn.fetchval(
                "INSERT INTO herald.notifications (user_id, title, data) VALUES "
                "($1, $2, jsonb_build_object('n', 1)) RETURNING seq", user, title))

    try:
        await fleet.start()
        await Publisher(send, checker, users, concurrency=8).run(150.0, 4.0)
        assert await until_delivered(checker, timeout=30), checker.report().summary()
        await asyncio.sleep(0.3)
        report = checker.report()
        print(f"\n[pgbouncer] {report.summary()}")
        assert report.ok and report.committed == 600, report.summary()
        assert all(node.dispatcher is not None for node in nodes)
        # The history and lifecycle paths work through the pooler too.
        from tests.test_http import call
        code, body = await call(nodes[0].port, "GET", "/api/notifications",
                                token=auth.mint_token(SECRET, users[0], 60))
        assert code == 200 and body["notifications"], body
    finally:
        await fleet.stop()
        await pool.close()
        for node in nodes:
            await node.stop()
    assert "prepared statement" not in bouncer.log()


async def test_a_bus_through_pgbouncer_is_refused_with_one_line(bouncer: PgBouncer) -> None:
    server = HeraldServer(make_config(node="node-x"), bouncer.url)
    with pytest.raises(ConfigError, match="HERALD_DATABASE_URL goes through a pooler in "
                                          "transaction mode"):
        await server.start()
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        env=clean_env(HERALD_DATABASE_URL=bouncer.url, HERALD_SECRET=SECRET,
                      HERALD_BUS_DATABASE_URL=bouncer.url),
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("herald: error: HERALD_BUS_DATABASE_URL goes through a pooler")


async def test_herald_status_shows_the_cluster(make_node, clients, database_url) -> None:
    from tests.conftest import token_for

    # (rebalance_rate=0: node-a would otherwise hand one of its 3 sockets to node-b)
    a = await make_node("node-a", heartbeat_interval=0.3, rebalance_rate=0.0)
    b = await make_node("node-b", heartbeat_interval=0.3, rebalance_rate=0.0)
    for _ in range(3):
        sock = await clients(a.port)
        await sock.hello(token_for("status-user"))
    await asyncio.sleep(0.8)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.cli", "status"],
        env=clean_env(HERALD_DATABASE_URL=database_url, HERALD_HEARTBEAT_INTERVAL="0.3"),
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  node-")}
    assert set(rows) == {"node-a", "node-b"}, out
    assert rows["node-a"].split()[1] == "3" and rows["node-b"].split()[1] == "0", out
    assert "serving" in rows["node-a"] and "NOTIFY queue:" in out and "relay:" in out
    # The shards each node listens to: status-user's on node-a, none on node-b.
    from app.shards import shard_of

    assert rows["node-a"].split()[-1] == str(shard_of("status-user")), out
    assert rows["node-b"].split()[-1] == "-", out
    assert "oldest undelivered:" in out
    leader = a if a.relay is not None and a.relay.leader else b
    assert "leader" in rows[leader.config.node]
    await b.stop()  # gone: its row goes too
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.cli", "status"],
        env=clean_env(HERALD_DATABASE_URL=database_url), cwd=ROOT, capture_output=True,
        text=True, timeout=60)
    assert "node-b" not in result.stdout, result.stdout


def test_multi_host_urls_become_sqlalchemys_form() -> None:
    from sqlalchemy.engine import make_url

    url = db.sqlalchemy_url("postgresql://u:p@db1:5432,db2/herald?target_session_attrs="
                            "read-write")
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+asyncpg" and parsed.database == "herald"
    assert parsed.query == {"host": ("db1:5432", "db2:5432"),
                            "target_session_attrs": "read-write"}
    assert db.sqlalchemy_url("postgres://u@h:6432/x") == "postgresql+asyncpg://u@h:6432/x"


def test_pool_floor_failures_are_one_line(caplog: Any) -> None:
    logger = logging.getLogger("asyncpg.pool")
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except OSError:
        with caplog.at_level(logging.WARNING, logger="asyncpg.pool"):
            logger.warning("Failed to restore the pool connection floor; retrying",
                           exc_info=True)
    (record,) = caplog.records
    assert record.exc_info is None and record.levelno == logging.WARNING
    assert record.getMessage() == ("database: cannot reopen the pool's connections "
                                   "(ConnectionRefusedError: [Errno 111] Connect call "
                                   "failed ('127.0.0.1', 5432)); retrying")
