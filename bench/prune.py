"""Retention under load: does pruning a big table slow the writers down?

    .venv/bin/python -m bench.prune                       # 1,000,000 rows, 500 inserts/s
    .venv/bin/python -m bench.prune --rows 100000 --seconds 10

A database of its own (``--database-url``, default ``herald_bench_prune`` on the local
server, created if missing and dropped first) is migrated and loaded with ``--rows`` rows
created 40 days ago over 10,000 users (loaded with triggers off, counters set after).
Then a writer inserts ``--rate`` rows per second, one INSERT per row through the real
triggers, on a fixed schedule (open loop: a stalled insert does not slow the schedule
down, so it shows in the latencies), for ``--seconds``:

1. without any pruner (the baseline);
2. while Herald's own retention pass (``app.retention.prune_pass``, batches of
   ``--batch`` with ``--pause`` seconds between them, as a node runs it) deletes every
   row older than 30 days, for as long as that pass takes.

3. without a pruner again: what this machine's noise looks like.

Every phase starts right after a CHECKPOINT and a sync, so one phase's dirty pages are
not written out during the next; 5 s of unmeasured inserts warm up first. It prints the
inserts' latency percentiles per phase, how long each prune transaction took (the
longest any row lock was held), the pruning rate and the table's size before and after,
as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app import db, schema
from app.retention import Pruned, RetentionStore, prune_pass


class TimedStore(RetentionStore):
    """The real store, timing each prune transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.batches: list[float] = []  # ms

    async def prune(self, older_than: datetime | None, limit: int,
                    start: Pruned | None = None) -> Pruned | None:
        started = time.perf_counter()
        try:
            return await super().prune(older_than, limit, start)
        finally:
            self.batches.append((time.perf_counter() - started) * 1000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def recreate(url: str) -> None:
    """Drop the database of ``url`` (whoever is connected) and create it empty."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def load(conn: asyncpg.Connection, rows: int, users: int = 10_000) -> float:
    """``rows`` old rows, fast: triggers off (session_replication_role), seqs computed."""
    started = time.monotonic()
    await conn.execute("SET session_replication_role = replica")
    chunk = 200_000
    for first in range(0, rows, chunk):
        await conn.execute(
            """
            INSERT INTO herald.notifications (user_id, seq, title, body, created_at)
            SELECT 'user-' || (g % $3), g / $3 + 1, 'Order #' || g || ' shipped',
                   'On its way', now() - interval '40 days' + g * interval '1 ms'
            FROM generate_series($1::bigint, $2::bigint) g
            """, first, min(first + chunk, rows) - 1, users)
    await conn.execute(
        "INSERT INTO herald.user_counters (user_id, last_seq) "
        "SELECT user_id, max(seq) FROM herald.notifications GROUP BY user_id")
    await conn.execute("SET session_replication_role = origin")
    await conn.execute("VACUUM ANALYZE herald.notifications")
    return time.monotonic() - started


async def write(pool: asyncpg.Pool, rate: float, seconds: float,
                until: asyncio.Future[object] | None = None) -> list[float]:
    """Insert at ``rate``/s on a fixed schedule for ``seconds``, and on until ``until``
    is done; return each insert's latency (ms)."""
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        await pool.execute("INSERT INTO herald.notifications (user_id, title) "
                           "VALUES ($1, 'fresh')", f"writer-{i % 1000}")
        latencies.append((time.perf_counter() - started) * 1000)

    start = time.perf_counter()
    i = 0
    while i < rate * seconds or (until is not None and not until.done()):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    await asyncio.gather(*pending)
    return latencies


async def settle(conn: asyncpg.Connection) -> None:
    """Write out what earlier work dirtied (PostgreSQL's buffers, then the kernel's), so
    that it does not land in the next phase's latencies."""
    await conn.execute("CHECKPOINT")
    await asyncio.to_thread(os.sync)


async def size(conn: asyncpg.Connection) -> str:
    return str(await conn.fetchval(
        "SELECT pg_size_pretty(pg_total_relation_size('herald.notifications'))"))


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune")
    parser.add_argument("--database-url",
                        default="postgresql://postgres@127.0.0.1/herald_bench_prune")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=0.1)
    args = parser.parse_args(argv)

    await recreate(args.database_url)
    await asyncio.to_thread(schema.upgrade, args.database_url)
    conn = await db.connect(args.database_url, "bench-prune")
    pool = await db.create_pool(args.database_url, "bench-prune-writers", min_size=10,
                                max_size=10)
    phases: list[tuple[str, list[float]]] = []
    try:
        loaded = await load(conn, args.rows)
        before = await size(conn)
        print(f"loaded {args.rows:,} rows in {loaded:.1f} s ({before})", flush=True)

        await settle(conn)
        await write(pool, args.rate, 5.0)  # warm-up, not measured
        await settle(conn)
        phases.append(("no pruner", await write(pool, args.rate, args.seconds)))
        print("baseline done", flush=True)

        await settle(conn)
        prune_pool = await db.create_pool(args.database_url, "bench-prune-pruner",
                                          min_size=1, max_size=1)
        store = TimedStore(prune_pool)
        started = time.monotonic()
        pruning = asyncio.create_task(prune_pass(store, 30.0, batch=args.batch,
                                                 pause=args.pause))
        during = await write(pool, args.rate, args.seconds, until=pruning)
        result = await pruning
        took = time.monotonic() - started
        await prune_pool.close()
        phases.append((f"pruner running (batch {args.batch}, pause {args.pause} s)", during))
        print("pruning done", flush=True)

        await settle(conn)
        phases.append(("no pruner, again", await write(pool, args.rate, args.seconds)))
        after = await size(conn)
        left = await conn.fetchval("SELECT count(*) FROM herald.notifications "
                                   "WHERE created_at < now() - interval '30 days'")
    finally:
        await pool.close()
        await conn.close()

    print()
    print(f"| inserts at {args.rate:.0f}/s | n | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for label, values in phases:
        print(f"| {label} | {len(values)} | {percentile(values, 0.5):.2f} | "
              f"{percentile(values, 0.9):.2f} | {percentile(values, 0.99):.2f} | "
              f"{max(values):.2f} |")
    print()
    batches = store.batches
    print(f"Pruned {result.total:,} rows in {took:.1f} s ({result.total / took:,.0f} rows/s) "
          f"in {len(batches)} transactions: p50 {percentile(batches, 0.5):.1f} ms, p99 "
          f"{percentile(batches, 0.99):.1f} ms, max {max(batches):.1f} ms each; {left} old "
          f"rows left; table {before} -> {after} (space is reused, not returned, until "
          "VACUUM FULL).")


if __name__ == "__main__":
    asyncio.run(main())
