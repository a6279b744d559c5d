"""Memory per connection: one node holding ``sockets`` live WebSockets, its RSS growth
divided by their number. Herald's clients say hello and are welcomed; the peer's join
their room. Measured on a node of its own so the figure is not shared out across three."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

from app import auth
from bench import socketio_load
from bench.herald_load import SECRET, HeraldNodes, Log, Window, open_clients, rss_mb
from herald_dev.checker import Checker
from herald_dev.loadgen import FleetClient
from herald_dev.net import free_port


async def herald(url: str, sockets: int, log: Log = print) -> dict[str, float]:
    nodes = HeraldNodes(url, count=1)
    await nodes.start()
    try:
        await asyncio.sleep(1)
        before = rss_mb(nodes.pids())
        checker = Checker()
        prefix = f"m{time.time_ns() % 10**8}"
        clients = [FleetClient(f"ws://127.0.0.1:{nodes.ports[0]}/ws", f"{prefix}-u{i}",
                               lambda u: auth.mint_token(SECRET, u, 36000), checker)
                   for i in range(sockets)]
        seconds = await open_clients(clients, batch=250)
        await asyncio.sleep(2)
        after = rss_mb(nodes.pids())
        await asyncio.gather(*(c.stop() for c in clients))
    finally:
        await nodes.stop()
    result = {"sockets": sockets, "rss_before_mb": before, "rss_mb": after,
              "kb_per_connection": (after - before) * 1024 / sockets, "open_seconds": seconds}
    log(f"herald one node, {sockets} sockets: {result}")
    return result


async def peer(url: str, sockets: int, log: Log = print) -> dict[str, float]:
    cache = socketio_load.install()
    port = free_port()
    proc = subprocess.Popen(["node", "server.js"], cwd=cache,
                            env={**os.environ, "DATABASE_URL": url, "PORT": str(port)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        await asyncio.sleep(1)
        before = rss_mb([proc.pid])
        clients = [socketio_load.EioClient(port, f"p-u{i}", Checker(), Window())
                   for i in range(sockets)]
        seconds = await open_clients(clients, batch=250)
        await asyncio.sleep(2)
        after = rss_mb([proc.pid])
        for client in clients:
            await client.stop()
    finally:
        proc.terminate()
        proc.wait()
    result = {"sockets": sockets, "rss_before_mb": before, "rss_mb": after,
              "kb_per_connection": (after - before) * 1024 / sockets, "open_seconds": seconds}
    log(f"peer one node, {sockets} sockets: {result}")
    return result
