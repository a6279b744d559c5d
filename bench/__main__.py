"""``herald bench`` (= ``python -m bench``): the database's ceiling (pgbench), memory per
socket, then Herald and the Socket.IO peer under the same workload, written to
docs/benchmarks.md and docs/benchmarks.png.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/herald bench                      # U = 1,000 and 10,000 (about 10 minutes)
    .venv/bin/herald bench --quick --out /tmp/b.md   # the CI smoke run: correctness only
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from app import schema
from bench import ceiling, herald_load, memory, node_scaling, socketio_load

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [("warm-up 4,000 @ 1,000/s", 4000, 1000.0), ("10,000 @ 500/s", 10000, 500.0),
             ("40,000 @ 2,000/s", 40000, 2000.0), ("60,000 max", 60000, 0.0)]
PEER = "Socket.IO 4 + @socket.io/postgres-adapter 0.5"
QUICK = [("smoke 300 @ 300/s", 300, 300.0)]


# The hand-written narrative after this line survives each run (it reads the figures).
KEPT_MARKER = ("<!-- Everything below is kept by `herald bench` when it rewrites the "
               "tables above. -->")


def _kept(out: Path) -> str:
    """What follows ``KEPT_MARKER`` in the previous ``out`` (with the marker), or ""."""
    try:
        previous = out.read_text()
    except FileNotFoundError:
        return ""
    at = previous.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + previous[at:]


def chart(results: list[herald_load.ScenarioResult], path: Path) -> None:
    """Latency percentiles and delivered/s per system and scenario, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def key(r: herald_load.ScenarioResult) -> str:
        return f"{r.name}\nU={r.users:,}"

    labels = sorted({key(r) for r in results}, key=[key(r) for r in results].index)
    systems = sorted({r.system for r in results}, key=[r.system for r in results].index)
    fig, (lat, rate) = plt.subplots(1, 2, figsize=(15, 5))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        mine = {key(r): r for r in results if r.system == system}
        xs = [j + i * width for j in range(len(labels))]
        lat.bar(xs, [mine[n].p99_ms if n in mine else 0 for n in labels], width,
                label=f"{system} p99", alpha=0.45)
        lat.bar(xs, [mine[n].p50_ms if n in mine else 0 for n in labels], width,
                label=f"{system} p50")
        rate.bar(xs, [mine[n].delivered_per_s if n in mine else 0 for n in labels], width,
                 label=system)
    for axis, title in ((lat, "latency (ms, log)"), (rate, "delivered / s")):
        axis.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(labels))])
        axis.set_xticklabels(labels, rotation=30, fontsize=7, ha="right")
        axis.set_title(title)
        axis.legend(fontsize=7)
    lat.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _scenario_table(results: list[herald_load.ScenarioResult]) -> list[str]:
    lines = ["| scenario | sent | delivered/s | lost | dup | out of order | p50 ms | p90 ms | "
             "p99 ms | max ms | relayed | node CPU ms / notification | loop lag max ms | "
             "CPU s: nodes / postgres / clients / publisher |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        relayed = "n/a" if r.relayed is None else f"{r.relayed:.0%}"
        lag = "n/a" if r.loop_lag_ms is None else f"≤ {r.loop_lag_ms:g}"
        lines.append(
            f"| {r.name} | {r.sent:,} | {r.delivered_per_s:,.0f} | {r.lost} | "
            f"{r.duplicated} | {r.out_of_order} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
            f"{r.p99_ms:.1f} | {r.max_ms:.1f} | {relayed} | {r.node_cpu_ms:.3f} | {lag} | "
            f"{r.cpu['nodes']:.1f} / {r.cpu['postgres']:.1f} / {r.cpu['bench']:.1f} / "
            f"{r.cpu['publisher']:.1f} |")
    return lines + [""]


async def ensure_database(url: str) -> None:
    """Create the bench's database if the server does not have it yet; otherwise fail
    with one line saying what to do."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        try:
            admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")),
                                          timeout=10)
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()
        except (OSError, asyncpg.PostgresError) as err:
            raise SystemExit(f"herald bench: database {name!r} does not exist and cannot be "
                             f"created ({err}); create it or pass --database-url") from None
        print(f"created database {name}")
        return
    except (OSError, asyncpg.PostgresError) as err:
        raise SystemExit(f"herald bench: cannot connect to {url} ({err}); "
                         "start PostgreSQL or pass --database-url") from None
    await conn.close()


def ceiling_and_memory(args: argparse.Namespace) -> list[str]:
    """pgbench's ceiling for the same INSERT, and memory per socket on one node."""
    lines: list[str] = []
    print("ceiling (pgbench)...")
    rows = ceiling.run(args.database_url, 2 if args.quick else 5)
    lines += ["## The database's ceiling (pgbench, transactions/s)", "",
              "| script | 1 client | 4 clients | 16 clients |", "|---|---|---|---|"]
    for name in ceiling.SCRIPTS:
        tps = {r.clients: r.tps for r in rows if r.script == name}
        lines.append(f"| {name} | " + " | ".join(f"{tps[c]:,.0f}" for c in ceiling.CLIENTS)
                     + " |")
    lines.append("")
    sockets = 300 if args.quick else args.sockets
    print(f"memory: {sockets} sockets on one node...")
    herald_mem = asyncio.run(memory.herald(args.database_url, sockets))
    peer_mem = asyncio.run(memory.peer(args.database_url, sockets))
    lines += [f"## Memory: {sockets:,} sockets on one node", "",
              "| system | RSS before MB | RSS after MB | KB per connection |", "|---|---|---|---|"]
    for system, m in (("Herald", herald_mem), (PEER, peer_mem)):
        lines.append(f"| {system} | {m['rss_before_mb']:.0f} | {m['rss_mb']:.0f} | "
                     f"{m['kb_per_connection']:.1f} |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="herald bench")
    parser.add_argument("--database-url", default=os.environ.get(
        "HERALD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/herald_bench"))
    parser.add_argument("--users", default="1000,10000", help="comma-separated U values")
    parser.add_argument("--sockets", type=int, default=10_000,
                        help="sockets on one node for the memory figure")
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (correctness, not figures)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--systems", default="herald,peer",
                        help="which systems to run (herald, peer or both), for iterating")
    parser.add_argument("--skip-ceiling", action="store_true",
                        help="leave out pgbench and the memory figure (for iterating)")
    parser.add_argument("--skip-scaling", action="store_true",
                        help="leave out the node-scaling table (1, 3 and 6 Herald nodes)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 sockets a process
    asyncio.run(ensure_database(args.database_url))
    schema.upgrade(args.database_url)
    out = Path(args.out)
    lines = ["# Benchmarks", "",
             f"Written by `herald bench{' --quick' if args.quick else ''}` "
             f"on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{platform.platform()}, {psutil.cpu_count()} cores, "
             f"{psutil.virtual_memory().total / 2**30:.0f} GiB. Everything shares this one "
             "machine: PostgreSQL (durability defaults: fsync and synchronous_commit on), "
             "the three nodes, the load client (one Python process holding every socket) "
             "and the publisher process. The CPU column says where the time went.", "",
             "The workload, identical for both systems: U users `u0…u{U-1}`, one WebSocket "
             "each (Herald: each user on the node that owns its shard, shard mod 3, as "
             "nginx's consistent hashing on herald.js's routing key places it; the peer: "
             "user i on node i mod 3, its adapter has no placement to gain from); a "
             "publisher sends N messages to uniformly random users, each carrying its "
             "send time (Herald: a single-row INSERT in its own "
             "transaction from 16 connections; the peer: an emit through its adapter from "
             "16 pooled connections). Latency is receive time minus send time, "
             "HdrHistogram; delivered/s is rows received over first send to last receive. "
             "*relayed* is the share of rows Herald's relay announced (the rest were "
             "announced by their own transaction's NOTIFY).", ""]
    if not args.skip_ceiling:
        lines += ceiling_and_memory(args)
    if not args.skip_scaling and not args.quick and "herald" in args.systems:
        lines += ["## Node scaling: cluster CPU per notification", "",
                  "`python -m bench.node_scaling`: 1,200 users, 300 single-row INSERTs/s for "
                  "15 s, the node processes' CPU minus their idle CPU over as long a window. "
                  "*spread*: user i on node i mod N (every node holds every shard); "
                  "*affinity*: each user on the node owning its shard (shard mod N); the "
                  "peer: user i on node i mod N.", ""]
        lines += asyncio.run(node_scaling.scaling_table(args.database_url, [1, 3, 6],
                                                        peer="peer" in args.systems))
        lines += [""]
    all_results: list[herald_load.ScenarioResult] = []
    wanted = set(args.systems.split(","))
    systems = [(name, run) for key, name, run in (
        ("herald", "Herald", herald_load.run_scenarios),
        ("peer", PEER, socketio_load.run_scenarios)) if key in wanted]
    users_list = [60] if args.quick else [int(u) for u in args.users.split(",")]
    for users in users_list:
        for system, run_scenarios in systems:
            results, extra = asyncio.run(run_scenarios(
                args.database_url, users, QUICK if args.quick else SCENARIOS))
            placed = ("each user on its shard's node" if system == "Herald"
                      else "user i on node i mod 3")
            lines += [f"## {system}, U = {users:,} (3 nodes, {placed})", "",
                      f"Nodes' RSS {extra['rss_mb']:.0f} MB in total, "
                      f"{extra['kb_per_connection']:.1f} KB per connection.", ""]
            lines += _scenario_table(results)
            lines += _extras(extra)
            all_results.extend(results)
    chart(all_results, out.with_suffix(".png"))
    # The raw figures, for other charts or comparisons between runs.
    out.with_suffix(".json").write_text(json.dumps(
        [dataclasses.asdict(r) for r in all_results], indent=1) + "\n")
    lines += [f"![latency and throughput]({out.with_suffix('.png').name})", "",
              f"This run took {(time.monotonic() - started) / 60:.0f} minutes.", ""]
    out.write_text("\n".join(lines) + "\n" + _kept(out))
    print(f"wrote {out}")


def _extras(extra: dict[str, float]) -> list[str]:
    ok = {1.0: "0 lost, 0 duplicated, 0 out of order", 0.0: "INCOMPLETE"}
    lines = []
    if "bulk_seconds" in extra:
        lines += [f"Bulk fan-out (one statement, {extra['bulk_rows']:,.0f} rows, one per "
                  f"online user): all delivered in {extra['bulk_seconds']:.2f} s, of which "
                  f"the INSERT statement itself {extra['bulk_statement_seconds']:.2f} s; the "
                  f"nodes had written every frame at "
                  f"{extra['bulk_written_seconds']:.2f} s, the rest is the one-process load "
                  f"client reading them ({ok[extra['bulk_ok']]}).", ""]
    if "storm_seconds" in extra:
        lines += [f"Replay storm ({extra['storm_clients']:,.0f} clients reconnect at once, "
                  f"{extra['storm_rows']:,.0f} missed rows): all replayed in "
                  f"{extra['storm_seconds']:.2f} s ({ok[extra['storm_ok']]}).", ""]
    return lines


if __name__ == "__main__":
    main()
