"""Memory under slow consumers: 200 WebSockets that say hello and never read again, while
10,000 notifications (9 KB bodies) flow to them; then 20 such sockets and 20,000
notifications (9 MB each, far beyond what the kernel's socket buffers absorb). Reports
the node's RSS before and after, with Herald's pending-bytes limit and with the limit
raised so high that it never acts (Tornado's default: an unbounded write buffer).

    .venv/bin/python -m bench.slow_consumers
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import asyncpg
import psutil

from app import auth, db, schema
from herald_dev.net import free_port
from herald_dev.rawws import stalled_client

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123"
BODY = 9000


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def run(url: str, max_pending: int, label: str, users: int, total: int) -> None:
    port = free_port()
    env = {**os.environ, "HERALD_DATABASE_URL": url, "HERALD_SECRET": SECRET,
           "HERALD_PORT": str(port), "HERALD_MAX_PENDING_BYTES": str(max_pending),
           "HERALD_SLOW_CONSUMER_TIMEOUT": "3600", "HERALD_LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--log-level", "ERROR"],
                            env=env, cwd=ROOT)
    try:
        for _ in range(200):
            try:
                urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        prefix = f"slow-{label}-{time.time_ns()}"
        socks = [stalled_client(port, auth.mint_token(SECRET, f"{prefix}-{i}"))
                 for i in range(users)]
        time.sleep(1)
        before = rss_mb(proc.pid)

        async def publish() -> None:
            conn = await asyncpg.connect(url)
            try:
                for batch in range(total // 500):
                    await conn.execute(
                        "INSERT INTO herald.notifications (user_id, title, body) "
                        "SELECT $1 || '-' || (g % $2), 'n' || g, repeat('x', $3) "
                        "FROM generate_series($4, $4 + 499) g", prefix, users, BODY, batch * 500)
            finally:
                await conn.close()

        asyncio.run(publish())
        time.sleep(5)
        after = rss_mb(proc.pid)
        with urlopen(f"http://127.0.0.1:{port}/metrics") as response:
            metrics = response.read().decode()
        delivered = next(line for line in metrics.splitlines()
                         if line.startswith("herald_notifications_delivered_total"))
        print(f"{label:>28}: RSS {before:6.1f} MB -> {after:6.1f} MB "
              f"(+{after - before:5.1f} MB for {users} stalled sockets, {total} x {BODY} B); "
              f"{delivered}")
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = db.start_embedded(Path(tmp))
        schema.upgrade(url)
        for users, total in ((200, 10_000), (20, 20_000)):
            run(url, 256 * 1024, "limit 256 KiB", users, total)
            run(url, 1024 * 1024, "limit 1 MiB (default)", users, total)
            run(url, 2**40, "no limit (Tornado default)", users, total)


if __name__ == "__main__":
    main()
