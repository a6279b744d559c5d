"""The capacity model behind docs/scaling.md: how many nodes, cores and primaries a
target (connected users, notifications per second) needs, from unit costs measured
here. Run it with other figures to check a plan:

    python -m bench.capacity --users 1000000 --rate 100000 \\
        --node-ms 0.25 --kb-per-socket 15 --inserts-per-core 1000

Every input is a measured unit cost (docs/scaling.md says where each comes from); the
model adds nothing but arithmetic and the headroom it states. It also replays a day's
worth of per-second load through the plan (``--simulate``): a random walk around the
target rate with bursts, checking no node, core or primary would run above its ceiling.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass

SHARDS = 64  # app/shards.py


@dataclass(frozen=True)
class UnitCosts:
    node_ms: float  # node CPU per notification with affinity routing, ms (one node's share)
    kb_per_socket: float  # node RSS per connected socket
    sockets_per_node: int  # the cap a node is run at (HERALD_MAX_CONNECTIONS)
    inserts_per_core: float  # durable single-row INSERT transactions/s per database core
    notify_per_s: float  # NOTIFYs/s one PostgreSQL server sustains (its global queue)
    relay_polls_per_s: float  # a relay's polls/s at full rate (one NOTIFY per shard each)
    headroom: float  # run every resource at most at this fraction of its ceiling


@dataclass(frozen=True)
class Plan:
    nodes: int
    node_cores: int
    node_memory_gb: float
    primaries: int
    cores_per_primary: int
    shards_per_primary: int
    notify_per_primary: float
    limits: dict[str, float]


def plan(users: int, rate: float, costs: UnitCosts, cores_per_primary: int = 32) -> Plan:
    """Nodes: enough for the sockets and for the CPU of the notifications (one core per
    node process: Tornado runs one loop). Affinity routing puts a whole shard on one
    node, so at most ``SHARDS`` nodes share the load usefully (more nodes only hold
    spares): past that, raise SHARDS. Primaries: enough cores for the inserts; users are
    split between primaries by whole shards, so routing stays a shard map."""
    by_sockets = math.ceil(users / (costs.sockets_per_node * costs.headroom))
    by_cpu = math.ceil(rate * costs.node_ms / 1000 / costs.headroom)
    nodes = max(by_sockets, by_cpu)
    insert_cores = rate / (costs.inserts_per_core * costs.headroom)
    primaries = max(1, math.ceil(insert_cores / cores_per_primary))
    while SHARDS % primaries:
        primaries += 1  # whole shards per primary, evenly
    # With the relay batching, a primary sends one NOTIFY per shard and poll, whatever
    # the insert rate: its NOTIFY rate is bounded by shards x polls.
    notify = min(rate / primaries, SHARDS / primaries * costs.relay_polls_per_s)
    return Plan(
        nodes=nodes, node_cores=nodes,
        node_memory_gb=users * costs.kb_per_socket / 2**20 + nodes * 0.06,
        primaries=primaries, cores_per_primary=cores_per_primary,
        shards_per_primary=SHARDS // primaries, notify_per_primary=notify,
        limits={"nodes by sockets": by_sockets, "nodes by cpu": by_cpu,
                "insert cores": insert_cores, "useful nodes": min(nodes, SHARDS)})


def simulate(the_plan: Plan, rate: float, costs: UnitCosts, hot: float = 1.3,
             seconds: int = 86_400, seed: int = 7) -> dict[str, float]:
    """Per second, a load around ``rate`` (a slow random walk within ±20%, and bursts of
    2x for 2-8 s, 1% of the time), over shards unevenly (one hot shard carries ``hot``
    times its share), shards dealt to nodes as consistent hashing would (shard s on
    node s mod N): the worst utilisation of a node core, of a primary's cores and of
    its NOTIFY budget (1.0 = the measured ceiling), and the share of seconds in which
    some node was above 1.0 (then its loop lags: latency grows, nothing is lost)."""
    rng = random.Random(seed)
    weights = [hot if s == 0 else 1.0 for s in range(SHARDS)]
    total = sum(weights)
    useful = min(the_plan.nodes, SHARDS)
    node_share = [sum(weights[s] for s in range(SHARDS) if s % useful == n) / total
                  for n in range(useful)]
    primary_share = max(sum(weights[s] for s in range(SHARDS) if s % the_plan.primaries == p)
                        for p in range(the_plan.primaries)) / total
    level, burst = 1.0, 0
    worst = {"node core": 0.0, "primary cores": 0.0, "primary notify": 0.0}
    over = 0
    for _ in range(seconds):
        level = min(1.2, max(0.8, level + rng.uniform(-0.01, 0.01)))
        if burst == 0 and rng.random() < 0.01 / 5:
            burst = rng.randint(2, 8)
        now = rate * level * (2.0 if burst else 1.0)
        burst = max(0, burst - 1)
        node = max(node_share) * now * costs.node_ms / 1000
        worst["node core"] = max(worst["node core"], node)
        over += node > 1.0
        primary = primary_share * now
        worst["primary cores"] = max(
            worst["primary cores"], primary / costs.inserts_per_core / the_plan.cores_per_primary)
        worst["primary notify"] = max(
            worst["primary notify"],
            min(primary, the_plan.shards_per_primary * costs.relay_polls_per_s)
            / costs.notify_per_s)
    worst["seconds over"] = over / seconds
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100_000)
    parser.add_argument("--node-ms", type=float, default=0.25)
    parser.add_argument("--kb-per-socket", type=float, default=15.0)
    parser.add_argument("--sockets-per-node", type=int, default=20_000)
    parser.add_argument("--inserts-per-core", type=float, default=1_000)
    parser.add_argument("--notify-per-s", type=float, default=18_900)
    parser.add_argument("--relay-polls-per-s", type=float, default=200)
    parser.add_argument("--headroom", type=float, default=0.6)
    parser.add_argument("--cores-per-primary", type=int, default=32)
    parser.add_argument("--hot", type=float, default=1.3,
                        help="the hottest shard's load over the average")
    parser.add_argument("--simulate", type=int, default=86_400, help="seconds (0: none)")
    args = parser.parse_args()
    costs = UnitCosts(args.node_ms, args.kb_per_socket, args.sockets_per_node,
                      args.inserts_per_core, args.notify_per_s, args.relay_polls_per_s,
                      args.headroom)
    the_plan = plan(args.users, args.rate, costs, args.cores_per_primary)
    print(f"target: {args.users:,} users, {args.rate:,.0f} notifications/s")
    print(f"nodes: {the_plan.nodes} (one core each; by sockets "
          f"{the_plan.limits['nodes by sockets']:.0f}, by CPU "
          f"{the_plan.limits['nodes by cpu']:.0f}; {the_plan.limits['useful nodes']:.0f} "
          f"carry shards), {the_plan.node_memory_gb:.1f} GB RSS")
    print(f"primaries: {the_plan.primaries} x {the_plan.cores_per_primary} cores "
          f"({the_plan.limits['insert cores']:.0f} cores of inserts), "
          f"{the_plan.shards_per_primary} shards each, "
          f"≤ {the_plan.notify_per_primary:,.0f} NOTIFY/s each")
    if args.simulate:
        worst = simulate(the_plan, args.rate, costs, args.hot, args.simulate)
        print("simulated worst (1.0 = the measured ceiling): " + ", ".join(
            f"{k} {v:.3f}" for k, v in worst.items()))
        fits = (worst["primary cores"] <= 1.0 and worst["primary notify"] <= 1.0
                and worst["seconds over"] <= 0.005)
        print("fits" if fits else "DOES NOT FIT")


if __name__ == "__main__":
    main()
