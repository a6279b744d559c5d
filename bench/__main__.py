"""``python -m bench``: the database ceiling (pgbench) and Herald under the benchmark
workload, written to docs/benchmarks.md (+ docs/benchmarks.png).

    .venv/bin/python -m bench --database-url postgresql://postgres@127.0.0.1/herald_bench
    .venv/bin/python -m bench --users 1000,10000

Work in progress (issue 5): U = 10,000 has not been run; `herald bench` and the CI smoke
run do not exist yet. Install the extras first: `.venv/bin/pip install -e '.[bench]'`.
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


def chart(results: list[herald_load.ScenarioResult], path: Path) -> None:
    """Latency percentiles and delivered/s per system and scenario, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r.name for r in results}, key=[r.name for r in results].index)
    systems = sorted({r.system for r in results}, key=[r.system for r in results].index)
    fig, (lat, rate) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        mine = {r.name: r for r in results if r.system == system}
        xs = [j + i * width for j in range(len(labels))]
        lat.bar(xs, [mine[n].p99_ms if n in mine else 0 for n in labels], width,
                label=f"{system} p99", alpha=0.45)
        lat.bar(xs, [mine[n].p50_ms if n in mine else 0 for n in labels], width,
                label=f"{system} p50")
        rate.bar(xs, [mine[n].delivered_per_s if n in mine else 0 for n in labels], width,
                 label=system)
    for axis, title in ((lat, "latency (ms, log)"), (rate, "delivered / s")):
        axis.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(labels))])
        axis.set_xticklabels(labels, rotation=15, fontsize=8)
        axis.set_title(title)
        axis.legend(fontsize=7)
    lat.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    lines = ["# Benchmarks (work in progress: issue 5)", "",
             "Not measured yet: U = 10,000, and the peer's bulk fan-out. Everything "
             "(PostgreSQL, the nodes, the load client and the publisher) shares one machine; "
             "the CPU column shows where the time goes. The peer's out-of-order counts are "
             "real: concurrent emits carry no per-user order, and it keeps nothing for "
             "offline users, so it has no replay storm to measure.", "",
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
    all_results: list[herald_load.ScenarioResult] = []
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
            if "bulk_seconds" in memory:
                ok = {1.0: "0 lost, 0 duplicated, 0 out of order", 0.0: "INCOMPLETE"}
                lines += [
                    f"Bulk fan-out (one INSERT … SELECT, {memory['bulk_rows']:,.0f} rows, one "
                    f"per online user): all delivered in {memory['bulk_seconds']:.2f} s "
                    f"({ok[memory['bulk_ok']]}).", "",
                    f"Replay storm ({users:,} clients reconnect at once, "
                    f"{memory['storm_rows']:,.0f} missed rows): all replayed in "
                    f"{memory['storm_seconds']:.2f} s ({ok[memory['storm_ok']]}).", ""]
            all_results.extend(results)
    chart(all_results, Path(args.out).with_suffix(".png"))
    lines += [f"![latency and throughput]({Path(args.out).with_suffix('.png').name})", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
