"""A chaos soak, run by hand: a three-node cluster behind nginx (``herald_dev.cluster``,
the very docker/nginx.conf), resuming clients through nginx, a steady publisher plus
bursts, and a fault every ``--every`` seconds, each kind in turn:

    kill      SIGKILL the busiest node, restart it
    term      SIGTERM the busiest node (a graceful drain), restart it
    rolling   restart every node, one after the other
    listen    terminate every node's LISTEN connection
    postgres  restart PostgreSQL (fast shutdown: every connection cut)
    cut       drop 50 clients' TCP connections without a close frame

At the end: the checker's verdict over everything committed (lost / duplicated / out of
order / unconfirmed), and per fault how long until every client was live again, and how
the sockets were spread over the nodes before and after.

    .venv/bin/python -m bench.soak                  # 6 minutes, 300 clients, 250/s
    .venv/bin/python -m bench.soak --minutes 2 --clients 100
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import signal
import tempfile
import time
from pathlib import Path

import asyncpg

from app import auth, db
from herald_dev.checker import Checker
from herald_dev.cluster import LocalCluster
from herald_dev.loadgen import Fleet, Publisher, sql_sender

FAULTS = ("kill", "term", "rolling", "listen", "postgres", "cut")
# What a statement meets while PostgreSQL restarts (anything else is a bug: raise it).
RESTARTING = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
              asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError,
              asyncpg.CannotConnectNowError)


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def burst(pool: asyncpg.Pool, checker: Checker, users: list[str], rows: int) -> None:
    """``rows`` notifications in one statement, spread over the users."""
    while True:
        try:
            inserted = await pool.fetch(
                "INSERT INTO herald.notifications (user_id, title) "
                "SELECT ($1::text[])[1 + g % cardinality($1::text[])], 'burst' "
                "FROM generate_series(1, $2) g RETURNING user_id, seq", users, rows,
                timeout=30)
        except RESTARTING:
            await asyncio.sleep(0.2)  # the database is restarting: burst again
            continue
        for row in inserted:
            checker.committed(row["user_id"], row["seq"])
        return


async def inject(kind: str, cluster: LocalCluster, fleet: Fleet,
                 pool: asyncpg.Pool) -> tuple[str, float]:
    """Apply one fault; return what was done and how long until it was over for the
    clients: every client live again (a node down, cut connections, a rolling restart)
    or every node ready again (LISTEN connections and PostgreSQL, which close no
    socket)."""
    counts = await cluster.sockets_per_node()
    busiest = counts.index(max(counts))
    started = time.monotonic()
    if kind in ("kill", "term"):
        sig = signal.SIGKILL if kind == "kill" else signal.SIGTERM
        await cluster.stop_node(busiest, sig)
        await fleet.wait_live(timeout=60)
        took = time.monotonic() - started
        await cluster.start_node(busiest)
        return f"{sig.name} {cluster.node_name(busiest)} (held {counts[busiest]})", took
    if kind == "rolling":
        for i in range(cluster.count):
            await cluster.restart_node(i)
        await fleet.wait_live(timeout=60)
        return "restarted every node in turn", time.monotonic() - started
    if kind == "cut":
        victims = random.sample(fleet.clients, min(50, len(fleet.clients)))
        for client in victims:
            client.cut()
        await asyncio.sleep(0.05)
        await fleet.wait_live(timeout=60)
        return f"cut {len(victims)} clients", time.monotonic() - started
    if kind == "listen":
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'herald:%:bus'")
        what = f"terminated {killed} LISTEN connections"
    else:
        await cluster.restart_database()
        what = "restarted PostgreSQL"
    await asyncio.sleep(0.5)  # let the nodes notice before asking whether they are ready
    await asyncio.gather(*(cluster.wait_ready(i, timeout=60) for i in range(cluster.count)))
    return what, time.monotonic() - started


async def soak(args: argparse.Namespace) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="herald-soak-"))
    cluster = LocalCluster(workdir, nodes=3, node_env={"HERALD_BUS_PING_INTERVAL": "1",
                                                        "HERALD_SHUTDOWN_GRACE": "2"})
    await cluster.start()
    pool = await db.create_pool(cluster.database_url, "herald-soak-publisher", min_size=4,
                                max_size=16, command_timeout=10)
    checker = Checker()
    users = [f"soak-{i}" for i in range(args.clients)]
    fleet = Fleet(cluster.ws_url, users, lambda u: auth.mint_token(cluster.secret, u, 36000),
                  checker)
    seconds = args.minutes * 60
    try:
        await fleet.start(timeout=60)
        log(f"{len(users)} clients live through nginx at {cluster.url}; "
            f"spread {await cluster.sockets_per_node()}; logs in {workdir}")
        publisher = Publisher(sql_sender(pool), checker, users)
        publishing = asyncio.create_task(publisher.run(args.rate, seconds))
        started = time.monotonic()
        kinds = itertools.cycle(FAULTS)
        recoveries: list[tuple[str, float]] = []
        bursts = 0
        while time.monotonic() - started < seconds - args.every:
            await asyncio.sleep(args.every / 2)
            await burst(pool, checker, users, args.burst)
            bursts += 1
            await asyncio.sleep(args.every / 2)
            kind = next(kinds)
            before = await cluster.sockets_per_node()
            what, recovered = await inject(kind, cluster, fleet, pool)
            await fleet.wait_live(timeout=60)
            recoveries.append((kind, recovered))
            log(f"{kind:8} {what}; over for the clients after {recovered:.2f}s; "
                f"sockets {before} -> {await cluster.sockets_per_node()}")
        await publishing
        deadline = time.monotonic() + 60
        while checker.report().total("lost") and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # let stray duplicates show up
        report = checker.report()
        log(f"{publisher.sent} published at {args.rate:g}/s + {bursts} bursts of "
            f"{args.burst}; publisher retries {publisher.failures}")
        log(f"verdict: {report.summary()}")
        for kind in FAULTS:
            times = [t for k, t in recoveries if k == kind]
            if times:
                log(f"  {kind:8} x{len(times)}: over for the clients within {max(times):.2f}s")
        log(f"final spread {await cluster.sockets_per_node()}; connections per client "
            f"max {max(c.connections for c in fleet.clients)}")
        return report.ok
    finally:
        await fleet.stop()
        await pool.close()
        await cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rate", type=float, default=250.0, help="notifications/s")
    parser.add_argument("--burst", type=int, default=1000, help="rows per burst")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between faults")
    args = parser.parse_args()
    raise SystemExit(0 if asyncio.run(soak(args)) else 1)


if __name__ == "__main__":
    main()
