"""Herald under the benchmark workload: 3 nodes, U users with one socket each (each user
on the node that owns its shard, shard mod 3, as nginx's consistent hashing on the
routing key places it; connected directly), a publisher of single-row INSERTs from 16 connections,
each carrying its send time. Measures delivered/s, lost/duplicated/out of order, latency
percentiles (HdrHistogram), node RSS per connection and CPU per process."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import asyncpg
import psutil
from hdrh.histogram import HdrHistogram

from app import auth, db, shards
from herald_dev.checker import Checker
from herald_dev.loadgen import FleetClient
from herald_dev.net import free_port

ROOT = Path(__file__).resolve().parent.parent
Log = Callable[[str], object]
SECRET = "bench-secret-0123456789abcdef0123"


@dataclass
class ScenarioResult:
    system: str
    users: int
    name: str
    sent: int
    delivered_per_s: float
    lost: int
    duplicated: int
    out_of_order: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu: dict[str, float] = field(default_factory=dict)  # process group -> CPU seconds
    relayed: float | None = None  # Herald: share of rows announced by the relay
    # Herald: the worst event-loop lag of any node during the scenario, as the upper bound
    # of its herald_event_loop_lag_seconds bucket (ms).
    loop_lag_ms: float | None = None

    @property
    def node_cpu_ms(self) -> float:
        """Node CPU per delivered notification, in ms."""
        return self.cpu.get("nodes", 0.0) * 1000 / max(self.sent, 1)


class Window:
    """Latency histogram plus the delivery window: first send to last receive, so that
    delivered/s does not count process start-up (the peer's publisher is a process)."""

    def __init__(self) -> None:
        self.histogram = HdrHistogram(1, 60_000_000, 3)  # microseconds
        self.reset()

    def reset(self) -> None:
        self.histogram.reset()
        self.first_sent = float("inf")
        self.last_received = 0.0

    def record(self, latency: float) -> None:
        now = time.time()
        self.histogram.record_value(max(1, int(latency * 1e6)))
        self.first_sent = min(self.first_sent, now - latency)
        self.last_received = max(self.last_received, now)

    def rate(self, received: int) -> float:
        span = self.last_received - self.first_sent
        return received / span if span > 0 else 0.0

    def result(self, system: str, users: int, name: str, report: Checker,
               cpu: dict[str, float]) -> "ScenarioResult":
        r = report.report()
        h = self.histogram
        return ScenarioResult(
            system, users, name, r.committed, self.rate(r.received), r.total("lost"),
            r.total("duplicated"), r.total("out_of_order"),
            h.get_value_at_percentile(50) / 1000, h.get_value_at_percentile(90) / 1000,
            h.get_value_at_percentile(99) / 1000, h.get_max_value() / 1000, cpu)


async def relay_pointers(pool: asyncpg.Pool) -> int:
    """Pointers ever left for the relay (statistics; the publisher has exited, so its
    counts are flushed)."""
    await pool.execute("SELECT pg_stat_clear_snapshot()")
    return int(await pool.fetchval(
        "SELECT coalesce(n_tup_ins, 0) FROM pg_stat_user_tables "
        "WHERE relid = 'herald.relay_pending'::regclass") or 0)


async def loop_lag_buckets(port: int) -> dict[float, float]:
    """A node's cumulative ``herald_event_loop_lag_seconds`` buckets: le -> count."""
    from tornado.httpclient import AsyncHTTPClient

    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    buckets = {}
    for line in response.body.decode().splitlines():
        if line.startswith('herald_event_loop_lag_seconds_bucket{le="'):
            le = line.split('"')[1]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def worst_lag_ms(before: list[dict[float, float]], after: list[dict[float, float]]) -> float:
    """The bound of the smallest bucket that holds every sample taken between two reads
    of each node's buckets, in ms (the worst lag of any node is at most this)."""
    worst = 0.0
    for old, new in zip(before, after, strict=True):
        total = new[float("inf")] - old[float("inf")]
        for le in sorted(new):
            if new[le] - old.get(le, 0.0) >= total:
                worst = max(worst, le)
                break
    return worst * 1000


class HeraldNodes:
    def __init__(self, url: str, count: int = 3) -> None:
        self.url, self.ports = url, [free_port() for _ in range(count)]
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for i, port in enumerate(self.ports):
            env = {**os.environ, "HERALD_DATABASE_URL": self.url, "HERALD_SECRET": SECRET,
                   "HERALD_PORT": str(port), "HERALD_NODE": f"node-{i + 1}",
                   "HERALD_HOST": "127.0.0.1", "HERALD_MAX_CONNECTIONS_PER_USER": "5",
                   "HERALD_LOG_FORMAT": "text"}
            self.procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "serve", "--log-level", "WARNING",
                cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL))
        for port in self.ports:
            for _ in range(300):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            await proc.wait()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


async def run_publisher(argv: list[str], cwd: Path, env: dict[str, str],
                        checker: Checker) -> float:
    """Run a publisher process (``user seq`` lines, ``cpu S``, ``done``); record every
    committed row in ``checker`` and return the publisher's own CPU seconds."""
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    lines = stdout.decode().split("\n")
    assert proc.returncode == 0 and "done" in lines, f"publisher failed: {argv}"
    cpu = 0.0
    for line in lines:
        if line.startswith("cpu "):
            cpu = float(line.split()[1])
        elif " " in line:
            user, seq = line.split()
            checker.committed(user, int(seq))
    return cpu


async def open_clients(clients: Sequence[FleetClient | Any], batch: int = 200,
                       timeout: float = 120) -> float:
    """Start ``clients`` ``batch`` at a time, each batch live before the next; return the
    seconds taken. Works for any client with ``start()`` and a ``live`` event."""
    started = time.monotonic()
    for i in range(0, len(clients), batch):
        for client in clients[i:i + batch]:
            client.start()
        await asyncio.wait_for(
            asyncio.gather(*(c.live.wait() for c in clients[i:i + batch])), timeout)
    return time.monotonic() - started


async def until_delivered(checker: Checker, timeout: float = 120) -> bool:
    """Wait until every committed notification was received; False on timeout."""
    deadline = time.monotonic() + timeout
    while checker.received_count() < checker.committed_count():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def frames_sent(port: int) -> float:
    """What one node's /metrics says it has written: live and replayed frames."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("herald_notifications_delivered_total ",
                                   "herald_notifications_replayed_total ")))


def until_sent(ports: list[int], target: float, started: float,
               stop: threading.Event) -> float | None:
    """Seconds from ``started`` until the nodes' frame counters sum to ``target``
    (polled every 5 ms from a thread, so a busy load client does not delay it)."""
    while not stop.is_set():
        if sum(frames_sent(port) for port in ports) >= target:
            return time.monotonic() - started
        time.sleep(0.005)
    return None


async def bulk_fan_out(pool: asyncpg.Pool, clients: list[FleetClient], ports: list[int],
                       log: Log = print) -> dict[str, float]:
    """One INSERT … SELECT with one row per online user: seconds from the statement's
    start until every row is on its socket; of those, the statement's own (its
    triggers, its commit) and when the nodes had written them all (their counters)."""
    checker = Checker()
    for client in clients:
        client.checker = checker
    users = [c.user for c in clients]
    before = sum(frames_sent(port) for port in ports)
    stop = threading.Event()
    started = time.monotonic()
    written = asyncio.ensure_future(asyncio.to_thread(
        until_sent, ports, before + len(users), started, stop))
    rows = await pool.fetch(
        "INSERT INTO herald.notifications (user_id, title) "
        "SELECT u, 'bulk' FROM unnest($1::text[]) u RETURNING user_id, seq", users)
    statement = time.monotonic() - started
    for row in rows:
        checker.committed(row["user_id"], row["seq"])
    complete = await until_delivered(checker)
    seconds = time.monotonic() - started
    stop.set()
    sent = await written
    report = checker.report()
    log(f"bulk fan-out of {len(rows)} rows: {seconds:.2f}s (the statement {statement:.2f}s, "
        f"written by the nodes at {sent or 0:.2f}s) complete={complete} {report.summary()}")
    return {"bulk_rows": len(rows), "bulk_seconds": seconds,
            "bulk_statement_seconds": statement, "bulk_written_seconds": sent or 0.0,
            "bulk_ok": float(complete and report.ok)}


async def replay_storm(pool: asyncpg.Pool, clients: list[FleetClient], nodes: "HeraldNodes",
                       log: Log = print,
                       missed: int = 100) -> dict[str, float]:
    """Every client goes away, ``missed`` rows per user are committed, then all of them
    reconnect at once with their cursors: seconds until every missed row arrived."""
    for client in clients:
        await client.stop()
    checker = Checker()
    users = [c.user for c in clients]
    rows = await pool.fetch(
        "INSERT INTO herald.notifications (user_id, title) "
        "SELECT u, 'missed' FROM unnest($1::text[]) u, generate_series(1, $2) "
        "RETURNING user_id, seq", users, missed)
    for row in rows:
        checker.committed(row["user_id"], row["seq"])
    fresh = []
    for old in clients:
        fresh.append(FleetClient(old.url, old.user, old.token_for, checker,
                                 cursor=old.cursor))
    started = time.monotonic()
    for client in fresh:
        client.start()
    complete = await until_delivered(checker)
    seconds = time.monotonic() - started
    report = checker.report()
    log(f"replay storm: {len(fresh)} clients, {len(rows)} rows in {seconds:.2f}s "
        f"complete={complete} {report.summary()}")
    clients[:] = fresh
    return {"storm_clients": len(fresh), "storm_rows": len(rows), "storm_seconds": seconds,
            "storm_ok": float(complete and report.ok)}


async def run_scenarios(url: str, users: int, scenarios: list[tuple[str, int, float]],
                        log: Log = print, ack: bool = True
                        ) -> tuple[list[ScenarioResult], dict[str, float]]:
    """Run ``scenarios`` (name, count, rate per second; rate 0 = as fast as possible).
    Without ``ack`` the clients never acknowledge (what the ack path costs)."""
    nodes = HeraldNodes(url)
    await nodes.start()
    results: list[ScenarioResult] = []
    memory: dict[str, float] = {}
    pool = await db.create_pool(url, "bench-driver", min_size=2, max_size=4)
    try:
        rss_before = rss_mb(nodes.pids())
        window = Window()
        checker = Checker()
        prefix = f"b{time.time_ns() % 10**8}"
        names = [f"{prefix}-u{i}" for i in range(users)]
        # Affinity routing (docs/scaling.md): a shard's users on one node.
        clients = [FleetClient(f"ws://127.0.0.1:{nodes.ports[shards.shard_of(name) % 3]}/ws",
                               name,
                               lambda u: auth.mint_token(SECRET, u, 36000), checker,
                               ack=ack, latency=window.record)
                   for name in names]
        seconds = await open_clients(clients)
        log(f"herald U={users}: {users} sockets live in {seconds:.1f}s")
        await asyncio.sleep(1)
        gc.freeze()  # the load client too: its full collections would pause every socket
        rss_after = rss_mb(nodes.pids())
        memory = {"rss_mb": rss_after, "kb_per_connection":
                  (rss_after - rss_before) * 1024 / users}
        for name, count, rate in scenarios:
            checker = Checker()
            window.reset()
            for client in clients:
                client.checker = checker
            pids = {"nodes": nodes.pids(), "postgres": postgres_pids(), "bench": [os.getpid()]}
            cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
            first_id = await pool.fetchval("SELECT coalesce(max(id), 0) FROM "
                                            "herald.notifications")
            pointers0 = await relay_pointers(pool)
            lag0 = [await loop_lag_buckets(port) for port in nodes.ports]
            publisher_cpu = await run_publisher(
                [sys.executable, "-m", "bench.publisher", url, prefix, str(users), str(count),
                 str(rate)], ROOT, dict(os.environ), checker)
            await until_delivered(checker, timeout=30)
            await asyncio.sleep(0.3)  # let stray duplicates show up
            cpu = {k: round(cpu_seconds(v) - cpu0[k], 2) for k, v in pids.items()}
            cpu["publisher"] = round(publisher_cpu, 2)
            result = window.result("Herald", users, name, checker, cpu)
            # The publisher inserts one row per statement, and each statement under the
            # relay's lease leaves one pointer: pointers / rows = the relayed share.
            inserted = await pool.fetchval("SELECT count(*) FROM herald.notifications "
                                           "WHERE id > $1", first_id)
            result.relayed = (await relay_pointers(pool) - pointers0) / max(inserted, 1)
            result.loop_lag_ms = worst_lag_ms(
                lag0, [await loop_lag_buckets(port) for port in nodes.ports])
            log(f"herald U={users} {name}: {result}")
            results.append(result)
        memory.update(await bulk_fan_out(pool, clients, nodes.ports, log))
        # The storm is 1,000 users (100 missed rows each) whatever U is, as specified.
        storm = clients[:1000]
        memory.update(await replay_storm(pool, storm, nodes, log))
        clients[:1000] = storm
        for client in clients:
            await client.stop()
        gc.unfreeze()
    finally:
        await pool.close()
        await nodes.stop()
    return results, memory
