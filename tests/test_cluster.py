"""The cluster, proven with real processes: PostgreSQL, three `herald serve` nodes and a
real nginx (docker/nginx.conf) in front. Every client connects through nginx.

Each scenario runs a steady publishing load to a few hundred resuming clients, injects
a fault, and ends with the checker's verdict: 0 lost, 0 duplicated, 0 out of order.
The figures are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import pytest_asyncio

from app import auth, db, shards
from herald_dev.checker import Checker, Report
from herald_dev.cluster import LocalCluster
from herald_dev.loadgen import Fleet, Publisher, http_sender, sql_sender

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module"),
              pytest.mark.timeout(180)]

USERS = 200
RATE = 250.0  # notifications per second
SECONDS = 6.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalCluster]:
    workdir: Path = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(workdir, nodes=3, node_env={
        "HERALD_BUS_PING_INTERVAL": "1", "HERALD_SHUTDOWN_GRACE": "2"})
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def pool(cluster: LocalCluster) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(cluster.database_url, "herald-test-publisher", min_size=4,
                             max_size=16, command_timeout=10)
    yield p
    await p.close()


class Run:
    """One scenario: fresh users, a fleet through nginx, a publisher, a checker."""

    def __init__(self, cluster: LocalCluster, name: str, affinity: bool = False) -> None:
        self.cluster = cluster
        self.name = name
        self.checker = Checker()
        prefix = f"{name}-{random.randrange(1 << 30):x}"
        self.users = [f"{prefix}-{i}" for i in range(USERS)]
        self.fleet = Fleet(cluster.ws_url, self.users,
                           lambda u: auth.mint_token(cluster.secret, u, 3600), self.checker,
                           affinity=affinity)

    async def __aenter__(self) -> "Run":
        await self.fleet.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fleet.stop()

    async def load(self, publisher: Publisher, fault: Callable[[], Awaitable[None]],
                   fault_after: float = SECONDS / 3) -> None:
        async def inject() -> None:
            await asyncio.sleep(fault_after)
            await fault()

        await asyncio.gather(publisher.run(RATE, SECONDS), inject())

    async def verdict(self, timeout: float = 30) -> Report:
        """Wait until every committed notification arrived (or time is up), let stray
        duplicates show up, then report."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.checker.report().total("lost") == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        report = self.checker.report()
        print(f"\n[{self.name}] {report.summary()} nodes={self.fleet.by_node()}")
        assert report.committed >= RATE * SECONDS * 0.9
        assert report.ok, report.failures()
        return report


def sql_publisher(run: Run, pool: asyncpg.Pool) -> Publisher:
    return Publisher(sql_sender(pool), run.checker, run.users)


async def test_sender_and_receiver_on_different_nodes(cluster: LocalCluster) -> None:
    """The original problem: publishes land round-robin on any node, receivers sit on
    all three; everything arrives."""
    answered: dict[str, int] = {}
    async with Run(cluster, "cross-node") as run:
        assert set(run.fleet.by_node()) == {"node-1", "node-2", "node-3"}
        publisher = Publisher(http_sender(cluster.url, cluster.api_key, answered),
                              run.checker, run.users)
        await publisher.run(RATE, SECONDS)
        await run.verdict()
    print(f"[cross-node] publishes answered by {answered}")
    assert len(answered) == 3


async def test_sigkill_one_node_mid_stream(cluster: LocalCluster, pool) -> None:
    async with Run(cluster, "sigkill") as run:
        victims = [c for c in run.fleet.clients if c.node == "node-2"]
        assert victims
        back_in = []

        async def fault() -> None:
            await cluster.stop_node(1, signal.SIGKILL)
            started = time.monotonic()
            await run.fleet.wait_live(timeout=15)
            back_in.append(time.monotonic() - started)

        await run.load(sql_publisher(run, pool), fault)
        await run.verdict()
        assert all(c.node != "node-2" for c in victims)
        print(f"[sigkill] {len(victims)} clients of node-2 live elsewhere after "
              f"{back_in[0]:.2f}s")
    await cluster.start_node(1)


def nodes_by_shard(run: Run) -> dict[int, set[str]]:
    """Which nodes hold the sockets of each shard's users."""
    held: dict[int, set[str]] = {}
    for client in run.fleet.clients:
        held.setdefault(shards.shard_of(client.user), set()).add(client.node)
    return held


async def test_affinity_routing_keeps_shards_whole_through_a_drain(
    cluster: LocalCluster, pool
) -> None:
    """Through nginx with the routing key: every shard's users share one node; a node
    drained (SIGTERM) under load hands its shards, whole, to the others; nothing is lost,
    duplicated or reordered, and the node, back, takes shards again."""
    async with Run(cluster, "affinity", affinity=True) as run:
        before = nodes_by_shard(run)
        assert all(len(nodes) == 1 for nodes in before.values()), before
        busiest = max(range(3), key=lambda i: sum(
            nodes == {f"node-{i + 1}"} for nodes in before.values()))
        moved = [s for s, nodes in before.items() if nodes == {f"node-{busiest + 1}"}]
        assert moved

        async def fault() -> None:
            await cluster.stop_node(busiest, signal.SIGTERM)
            await run.fleet.wait_live(timeout=15)

        await run.load(sql_publisher(run, pool), fault)
        await run.verdict()
        after = nodes_by_shard(run)
        assert all(len(nodes) == 1 for nodes in after.values()), after
        assert all(after[s] != {f"node-{busiest + 1}"} for s in moved)
        print(f"[affinity] {len(moved)} shards of node-{busiest + 1} moved whole: "
              f"{ {s: sorted(after[s]) for s in moved} }")
    await cluster.start_node(busiest)


async def test_sigterm_then_rolling_restart(cluster: LocalCluster, pool) -> None:
    async with Run(cluster, "rolling") as run:
        codes: list[int] = []

        async def fault() -> None:
            codes.append(await cluster.stop_node(0, signal.SIGTERM))
            await run.fleet.wait_live(timeout=15)
            await cluster.start_node(0)
            for i in range(3):  # rolling restart of every node
                await cluster.restart_node(i)
                await run.fleet.wait_live(timeout=15)

        await run.load(sql_publisher(run, pool), fault, fault_after=1.0)
        await run.verdict()
        assert codes == [0]  # graceful exit
        going_away = sum(c.close_codes.count(1001) for c in run.fleet.clients)
        print(f"[rolling] {going_away} sockets closed with 1001 and resumed")
        assert going_away >= USERS / 3
        # The node restarted last took most of the sockets; the nodes even it out.
        started = time.monotonic()
        history = [await cluster.sockets_per_node()]
        while max(history[-1]) > 1.5 * sum(history[-1]) / 3:
            assert time.monotonic() - started < 60, history
            await asyncio.sleep(1.0)
            history.append(await cluster.sockets_per_node())
        await run.fleet.wait_live(timeout=15)
        print(f"[rolling] sockets per node right after the restarts {history[0]}, "
              f"balanced {history[-1]} after {time.monotonic() - started:.1f}s")


async def test_clients_are_never_locked_out(cluster: LocalCluster, pool) -> None:
    """Through nginx: SIGKILL the busiest node and restart it, twice, then SIGTERM the
    busiest one: each time every client it held is live again, on another node, within
    5 s (nginx must not take the healthy nodes out of its rotation)."""
    async with Run(cluster, "lockout") as run:
        times = []
        for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGTERM):
            counts = await cluster.sockets_per_node()
            busiest = counts.index(max(counts))
            name = cluster.node_name(busiest)
            victims = {c: c.connections for c in run.fleet.clients if c.node == name}
            assert victims, (name, run.fleet.by_node())
            await cluster.stop_node(busiest, sig)
            started = time.monotonic()
            while not all(c.connections > before and c.live.is_set() and c.node != name
                          for c, before in victims.items()):
                assert time.monotonic() - started < 15, "clients locked out"
                await asyncio.sleep(0.02)
            times.append(time.monotonic() - started)
            print(f"[lockout] {sig.name} {name}: its {len(victims)} clients live elsewhere "
                  f"after {times[-1]:.2f}s")
            await cluster.start_node(busiest)
        assert max(times) < 5.0, times


async def test_listen_connections_terminated_repeatedly(cluster: LocalCluster, pool) -> None:
    async with Run(cluster, "listen-kill") as run:
        killed: list[int] = []

        async def fault() -> None:
            for _ in range(5):
                killed.append(await pool.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'herald:%:bus'"))
                await asyncio.sleep(0.5)

        await run.load(sql_publisher(run, pool), fault, fault_after=1.0)
        await run.verdict()
        print(f"[listen-kill] LISTEN connections terminated per round: {killed}")
        assert sum(killed) >= 10


async def test_postgresql_restarted_mid_stream(cluster: LocalCluster, pool) -> None:
    async with Run(cluster, "pg-restart") as run:
        publisher = sql_publisher(run, pool)
        await run.load(publisher, cluster.restart_database)
        await run.verdict()
        print(f"[pg-restart] publisher saw {publisher.failures} failed attempts (retried)")
        assert publisher.failures > 0  # the restart really happened mid-stream
        await run.fleet.wait_live(timeout=15)


async def test_clients_whose_network_is_cut_resume(cluster: LocalCluster, pool) -> None:
    async with Run(cluster, "net-cut") as run:
        cut = run.fleet.clients[:50]

        async def fault() -> None:
            for client in cut:
                client.cut()
            await run.fleet.wait_live(timeout=15)

        await run.load(sql_publisher(run, pool), fault)
        await run.verdict()
        assert all(c.connections >= 2 for c in cut)
        print(f"[net-cut] {len(cut)} clients cut and resumed")
