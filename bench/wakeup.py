"""The floor under a node's cost per notification: what it costs a Python process to be
woken by one NOTIFY, before any of Herald's code runs.

    .venv/bin/python -m bench.wakeup [--database-url URL] [--count 3000]

One asyncpg connection LISTENs with a listener that does nothing (then one that queues
and parses the payload, as Herald's bus does); another process sends ``--count`` NOTIFYs,
2 ms apart. Prints the listening process's CPU per NOTIFY, on asyncio's loop and on
uvloop. Every node of a cluster receives every NOTIFY, so per notification a cluster of
N nodes pays at least N times this, whatever the nodes then do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

SENDER = """
import asyncio, sys, asyncpg
PAYLOAD = '{"k":"new","u":{"x":1}}'
async def main(url, count):
    conn = await asyncpg.connect(url)
    for _ in range(count):
        await conn.execute("SELECT pg_notify('herald_wakeup', $1)", PAYLOAD)
        await asyncio.sleep(0.002)
    await conn.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def measure(url: str, count: int, parse: bool) -> float:
    listener = await asyncpg.connect(url)
    queue: asyncio.Queue[str] = asyncio.Queue()
    seen = 0

    def on_notify(*args: Any) -> None:
        nonlocal seen
        seen += 1
        if parse:
            queue.put_nowait(args[-1])

    async def worker() -> None:
        while True:
            json.loads(await queue.get())

    await listener.add_listener("herald_wakeup", on_notify)
    task = asyncio.create_task(worker())
    started = time.process_time()
    sender = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, url, str(count))
    await sender.wait()
    await asyncio.sleep(0.5)
    cpu = time.process_time() - started
    task.cancel()
    await listener.close()
    assert seen == count, (seen, count)
    return cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wakeup")
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/postgres")
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    for loop in ("asyncio", "uvloop"):
        for parse in (False, True):
            runner: Any = asyncio.run
            if loop == "uvloop":
                import uvloop

                runner = uvloop.run
            micros = runner(measure(args.database_url, args.count, parse))
            what = "queue + json.loads" if parse else "no-op listener"
            print(f"{loop:8} {what:20} {micros:6.0f} µs of CPU per NOTIFY", flush=True)


if __name__ == "__main__":
    main()
