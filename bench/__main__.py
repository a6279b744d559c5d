"""``python -m bench``: the database ceiling (pgbench) and Herald under the benchmark
workload, written to docs/benchmarks.md (+ docs/benchmarks.png).

    .venv/bin/python -m bench --database-url postgresql://postgres@127.0.0.1/herald_bench
    .venv/bin/python -m bench --users 1000,10000

Work in progress (issue 5): the replay storm and bulk fan-out scenarios and the chart are
not written yet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path

import asyncpg
import psutil

from app import schema
from bench import ceiling, herald_load, socketio_load

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [("warm-up 4,000 @ 1,000/s", 4000, 1000.0), ("10,000 @ 500/s", 10000, 500.0),
             ("40,000 @ 2,000/s", 40000, 2000.0), ("60,000 max", 60000, 0.0)]
QUICK = [("smoke 300 @ 300/s", 300, 300.0)]


async def prepare(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        statements: list[str] = []
        ceiling.prepare(statements.append)
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--database-url", default=os.environ.get(
        "HERALD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/herald_bench"))
    parser.add_argument("--users", default="1000")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    schema.upgrade(args.database_url)
    asyncio.run(prepare(args.database_url))
    lines = ["# Benchmarks", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{platform.platform()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB; PostgreSQL on the same "
             "machine with durability defaults (fsync, synchronous_commit on).", ""]
    print("ceiling (pgbench)...")
    rows = ceiling.run(args.database_url, 2 if args.quick else 5)
    lines += ["## The database's ceiling (pgbench, transactions/s)", "",
              "| script | 1 client | 4 clients | 16 clients |", "|---|---|---|---|"]
    for name in ceiling.SCRIPTS:
        tps = {r.clients: r.tps for r in rows if r.script == name}
        lines.append(f"| {name} | " + " | ".join(f"{tps[c]:,.0f}" for c in ceiling.CLIENTS)
                     + " |")
    lines.append("")
    systems = [("Herald", herald_load.run_scenarios),
               ("Socket.IO 4 + @socket.io/postgres-adapter 0.5", socketio_load.run_scenarios)]
    for users in (int(u) for u in args.users.split(",")):
        for system, run_scenarios in systems:
            results, memory = asyncio.run(run_scenarios(
                args.database_url, users, QUICK if args.quick else SCENARIOS))
            lines += [f"## {system}, U = {users:,} (3 nodes, user i on node i mod 3)", "",
                      f"Nodes' RSS {memory['rss_mb']:.0f} MB in total, "
                      f"{memory['kb_per_connection']:.1f} KB per connection.", "",
                      "| scenario | sent | delivered/s | lost | dup | out of order | p50 ms | "
                      "p90 ms | p99 ms | max ms | CPU s nodes / postgres / bench |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in results:
                lines.append(
                    f"| {r.name} | {r.sent:,} | {r.delivered_per_s:,.0f} | {r.lost} | "
                    f"{r.duplicated} | {r.out_of_order} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
                    f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {r.cpu['nodes']:.1f} / "
                    f"{r.cpu['postgres']:.1f} / {r.cpu['bench']:.1f} |")
            lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
