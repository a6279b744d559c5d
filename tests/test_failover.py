"""Database failover (docs/operations.md "Production topology"): two nodes on a libpq
multi-host URL over a
primary and a synchronous streaming standby. The primary crashes under a steady
publishing load and the standby is promoted: no confirmed commit is lost, nothing is
delivered twice or out of order, the sockets stay open, and both nodes are ready again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest
from tornado.httpclient import AsyncHTTPClient

from app import auth, db
from app.server import HeraldServer
from bench.herald_load import until_delivered
from herald_dev.checker import Checker
from herald_dev.loadgen import Fleet, Publisher, sql_sender
from tests.conftest import SECRET, make_config
from tests.helpers import wait_for
from tests.pgpair import PgPair

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]


@pytest.fixture
async def pair() -> AsyncIterator[PgPair]:
    p = PgPair()
    await p.start()
    yield p
    await p.stop()


async def ready(port: int) -> bool:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/readyz",
                                             raise_error=False)
    return response.code == 200


async def test_primary_crash_and_promotion_lose_nothing(pair: PgPair) -> None:
    url = pair.url()
    migrated = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "app.cli", "migrate", "--database-url", url],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
        capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    nodes = [HeraldServer(make_config(node=name, bus_ping_interval=0.5), url)
             for name in ("node-a", "node-b")]
    for node in nodes:
        await node.start()
    checker = Checker()
    users = [f"fo-{i}" for i in range(20)]
    fleet = Fleet([f"ws://127.0.0.1:{node.port}/ws" for node in nodes], users,
                  lambda u: auth.mint_token(SECRET, u, 3600), checker)
    pool = await db.create_pool(url, "herald-test-publisher", min_size=4, max_size=8,
                                command_timeout=5)
    try:
        await fleet.start()
        publisher = Publisher(sql_sender(pool), checker, users, concurrency=8)
        publishing = asyncio.create_task(publisher.run(100.0, 8.0))
        await asyncio.sleep(2.0)
        await pair.crash_primary()
        await asyncio.sleep(1.0)
        await pair.promote_standby()
        await publishing
        assert await until_delivered(checker, timeout=60), checker.report().summary()
        await asyncio.sleep(0.5)  # late duplicates, if any, show up now
        report = checker.report()
        print(f"failover: {report.summary()}; publisher retries {publisher.failures}")
        assert report.total("lost") == 0, report.summary()
        assert report.total("duplicated") == 0, report.summary()
        assert report.total("out_of_order") == 0, report.summary()
        assert report.committed >= 600, report.summary()
        assert publisher.failures > 0  # the crash was felt by the writers
        moved = [(c.connections, c.close_codes) for c in fleet.clients if c.connections != 1]
        assert not moved  # no socket had to reconnect
        for node in nodes:
            await wait_for(lambda node=node: ready(node.port), timeout=30)
            assert node.bus.reconnects >= 1
    finally:
        await fleet.stop()
        await pool.close()
        for node in nodes:
            await node.stop()
