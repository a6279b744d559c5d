"""One Herald scenario at a time, for A/B comparisons while profiling (run each side one
after the other in the same session: only the ratio means anything):

    .venv/bin/python -m bench.scenario --users 1000 --count 10000 --rate 500 --max 30000
    .venv/bin/python -m bench.scenario --no-acks      # the same without client acks

The database (default ``herald_ab`` on the local server) is dropped and created again.
Prints one line per scenario (node and PostgreSQL CPU, node CPU per notification,
latency, delivery) and the bulk fan-out and replay storm figures.
"""

from __future__ import annotations

import argparse
import asyncio

from app import schema
from bench import herald_load
from bench.prune import recreate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scenario")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/herald_ab")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--max", type=int, default=30_000,
                        help="then this many as fast as possible (0: skip)")
    parser.add_argument("--no-acks", action="store_true", help="clients never ack")
    args = parser.parse_args(argv)
    asyncio.run(recreate(args.database_url))
    schema.upgrade(args.database_url)
    scenarios = [("warm-up", 3000, 1000.0), (f"{args.count} @ {args.rate:g}/s", args.count,
                                            args.rate)]
    if args.max:
        scenarios.append((f"{args.max} max", args.max, 0.0))
    results, extra = asyncio.run(herald_load.run_scenarios(
        args.database_url, args.users, scenarios, log=lambda line: None,
        ack=not args.no_acks))
    for r in results:
        print(f"{r.name}: nodes {r.cpu.get('nodes')} s, postgres {r.cpu.get('postgres')} s, "
              f"{r.node_cpu_ms:.3f} ms/notification, p50 {r.p50_ms:.1f} p99 {r.p99_ms:.1f} ms, "
              f"{r.delivered_per_s:,.0f}/s, lost {r.lost} dup {r.duplicated} "
              f"ooo {r.out_of_order}")
    print(f"bulk {extra['bulk_rows']:.0f} rows: {extra['bulk_seconds']:.2f} s (statement "
          f"{extra['bulk_statement_seconds']:.2f} s, written by the nodes at "
          f"{extra['bulk_written_seconds']:.2f} s); replay storm "
          f"{extra['storm_seconds']:.2f} s")


if __name__ == "__main__":
    main()
