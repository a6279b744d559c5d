"""Node scaling: cluster CPU per notification with 1, 3 and 6 nodes at a fixed rate, for
Herald (two placements) and the Socket.IO peer.

    python -m bench.node_scaling [--database-url URL] [--nodes 1,3,6] [--rate 300]
                                 [--seconds 15] [--users 1200]

The workload of issue 20's measurement: one database, ``users`` users with one socket
each, a publisher of single-row INSERTs at ``rate`` per second for ``seconds``, and the
node processes' CPU over that window minus their idle CPU over a window as long (taken
just before, sockets connected, nothing published). Two placements per node count:

* ``spread``: user i on node i mod N (round robin: every node holds users of every
  shard, so every node listens to every shard);
* ``affinity``: each user on the node that owns its shard (shard mod N), as nginx's
  consistent hashing on the routing key does: each node listens to ~64/N shards.

Prints a table; every run also checks 0 lost, 0 duplicated, 0 out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import time
from typing import Any, Awaitable, Callable

from app import auth, schema, shards
from bench.herald_load import (
    ROOT,
    SECRET,
    HeraldNodes,
    cpu_seconds,
    open_clients,
    run_publisher,
    until_delivered,
)
from herald_dev.checker import Checker
from herald_dev.loadgen import FleetClient


async def measure(pids: list[int], clients: list[Any], checker: Checker, nodes_count: int,
                  seconds: float, publish: Callable[[], Awaitable[float]]) -> dict[str, float]:
    """Connect ``clients``, take the nodes' idle CPU over ``seconds``, then ``publish`` and
    wait for every row: the busy CPU minus the idle cost of as long a window (pings,
    heartbeats, relay), per notification."""
    await open_clients(clients)
    await asyncio.sleep(2)  # sessions settle, shards listened to
    gc.freeze()
    idle0 = cpu_seconds(pids)
    await asyncio.sleep(seconds)
    idle = cpu_seconds(pids) - idle0
    busy0 = cpu_seconds(pids)
    started = time.monotonic()
    await publish()
    complete = await until_delivered(checker, timeout=60)
    await asyncio.sleep(0.3)
    window = time.monotonic() - started
    net = cpu_seconds(pids) - busy0 - idle * window / seconds
    report = checker.report()
    return {"nodes": nodes_count, "sent": report.committed,
            "cpu_ms": net * 1000 / max(report.committed, 1),
            "ok": float(complete and report.ok), "lost": report.total("lost"),
            "dup": report.total("duplicated"), "ooo": report.total("out_of_order")}


async def one_run(url: str, nodes_count: int, placement: str, users: int, rate: float,
                  seconds: float) -> dict[str, float]:
    nodes = HeraldNodes(url, count=nodes_count)
    await nodes.start()
    checker = Checker()
    prefix = f"s{time.time_ns() % 10**8}"
    names = [f"{prefix}-u{i}" for i in range(users)]

    def node_of(i: int, name: str) -> int:
        return i % nodes_count if placement == "spread" else shards.shard_of(name) % nodes_count

    clients = [FleetClient(f"ws://127.0.0.1:{nodes.ports[node_of(i, n)]}/ws", n,
                           lambda u: auth.mint_token(SECRET, u, 36000), checker)
               for i, n in enumerate(names)]
    try:
        return await measure(nodes.pids(), clients, checker, nodes_count, seconds,
                             lambda: run_publisher(
                                 [sys.executable, "-m", "bench.publisher", url, prefix,
                                  str(users), str(int(rate * seconds)), str(rate)],
                                 ROOT, dict(os.environ), checker))
    finally:
        for client in clients:
            await client.stop()
        gc.unfreeze()
        await nodes.stop()


async def peer_run(url: str, nodes_count: int, users: int, rate: float,
                   seconds: float) -> dict[str, float]:
    """The same measurement for the Socket.IO peer (bench/socketio_peer): user i on node
    i mod N, its adapter's NOTIFY reaching every node."""
    import subprocess

    from bench import socketio_load
    from bench.herald_load import Window
    from herald_dev.net import free_port

    cache = socketio_load.install()
    env = {**os.environ, "DATABASE_URL": url}
    ports = [free_port() for _ in range(nodes_count)]
    procs = [subprocess.Popen(["node", "server.js"], cwd=cache, env={**env, "PORT": str(p)},
                              stdout=subprocess.PIPE, text=True) for p in ports]
    checker, window = Checker(), Window()
    prefix = f"p{time.time_ns() % 10**8}"
    clients = [socketio_load.EioClient(ports[i % nodes_count], f"{prefix}-u{i}", checker,
                                       window) for i in range(users)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return await measure([p.pid for p in procs], clients, checker, nodes_count, seconds,
                             lambda: run_publisher(
                                 ["node", "publisher.js", prefix, str(users),
                                  str(int(rate * seconds)), str(rate)], cache, env, checker))
    finally:
        for client in clients:
            await client.stop()
        gc.unfreeze()
        for proc in procs:
            proc.terminate()
            proc.wait()


async def scaling_table(url: str, counts: list[int], users: int = 1200, rate: float = 300.0,
                        seconds: float = 15.0, peer: bool = True) -> list[str]:
    """Run every placement and node count (and the peer's); the Markdown table."""
    rows: list[dict[str, float | str]] = []
    for placement in ("spread", "affinity", "peer") if peer else ("spread", "affinity"):
        for count in counts:
            run = (peer_run(url, count, users, rate, seconds) if placement == "peer"
                   else one_run(url, count, placement, users, rate, seconds))
            result: dict[str, float | str] = {"placement": placement, **await run}
            print(result, flush=True)
            rows.append(result)
    lines = ["| system, placement | nodes | cluster CPU ms / notification | vs 1 node | "
             "delivery |", "|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["placement"] == row["placement"]
                    and r["nodes"] == counts[0])
        ratio = float(row["cpu_ms"]) / max(float(base["cpu_ms"]), 1e-9)
        ok = ("0 lost, 0 dup, 0 ooo" if row["ok"] else
              f"INCOMPLETE ({row['lost']} lost, {row['dup']} dup, {row['ooo']} ooo)")
        who = ("Socket.IO peer, user i on node i mod N" if row["placement"] == "peer"
               else f"Herald, {row['placement']}")
        lines.append(f"| {who} | {row['nodes']} | {float(row['cpu_ms']):.3f} | "
                     f"{ratio:.2f}x | {ok} |")
    return lines


async def main(args: argparse.Namespace) -> None:
    from bench.__main__ import ensure_database  # here: bench/__main__.py imports this module

    await ensure_database(args.database_url)
    await asyncio.to_thread(schema.upgrade, args.database_url)  # alembic runs its own loop
    counts = [int(n) for n in args.nodes.split(",")]
    print("\n".join(await scaling_table(args.database_url, counts, args.users, args.rate,
                                        args.seconds, peer=not args.no_peer)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.node_scaling")
    parser.add_argument("--database-url", default=os.environ.get(
        "HERALD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/herald_bench"))
    parser.add_argument("--nodes", default="1,3,6")
    parser.add_argument("--users", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--no-peer", action="store_true", help="Herald only")
    asyncio.run(main(parser.parse_args()))
