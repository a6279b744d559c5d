"""The peer under the same workload: Socket.IO 4 with @socket.io/postgres-adapter, three
Node.js nodes, each user in a room named after it, a publisher emitting through the
adapter. The load client speaks engine.io v4 over a raw WebSocket. The npm install goes
to ~/.cache/herald-bench/socketio, never into the repository."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.herald_load import (
    Log,
    ScenarioResult,
    Window,
    cpu_seconds,
    open_clients,
    postgres_pids,
    rss_mb,
    run_publisher,
    until_delivered,
)
from herald_dev.checker import Checker
from herald_dev.net import free_port

PEER = Path(__file__).resolve().parent / "socketio_peer"
CACHE = Path.home() / ".cache" / "herald-bench" / "socketio"


def install() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "server.js", "publisher.js"):
        shutil.copy(PEER / name, CACHE / name)
    if not (CACHE / "node_modules" / "socket.io").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=CACHE, check=True)
    return CACHE


class EioClient:
    """One user's socket: engine.io v4 open, Socket.IO connect to "/", events."""

    def __init__(self, port: int, user: str, checker: Checker, window: Window):
        self.port, self.user, self.checker, self.window = port, user, checker, window
        self.live = asyncio.Event()
        self.conn: WebSocketClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        url = (f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"
               f"&user={self.user}")
        self.conn = await websocket_connect(url)
        while True:
            message = await self.conn.read_message()
            if message is None:
                return
            assert isinstance(message, str)
            if message.startswith("0"):
                await self.conn.write_message("40")
            elif message.startswith("40"):
                self.live.set()
            elif message == "2":
                await self.conn.write_message("3")
            elif message.startswith("42"):
                _, payload = json.loads(message[2:])
                self.checker.received(self.user, payload["seq"])
                self.window.record(time.time() - payload["sent"])

    async def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.task is not None:
            self.task.cancel()


async def run_scenarios(url: str, users: int, scenarios: list[tuple[str, int, float]],
                        log: Log = print) -> tuple[list[ScenarioResult], dict[str, float]]:
    cache = install()
    env = {**os.environ, "DATABASE_URL": url}
    ports = [free_port() for _ in range(3)]
    nodes = [subprocess.Popen(["node", "server.js"], cwd=cache, env={**env, "PORT": str(p)},
                              stdout=subprocess.PIPE, text=True) for p in ports]
    results: list[ScenarioResult] = []
    try:
        for proc in nodes:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids = [p.pid for p in nodes]
        rss_before = rss_mb(pids)
        window = Window()
        checker = Checker()
        prefix = f"s{time.time_ns() % 10**8}"
        clients = [EioClient(ports[i % 3], f"{prefix}-u{i}", checker, window)
                   for i in range(users)]
        seconds = await open_clients(clients)
        log(f"socket.io U={users}: live in {seconds:.1f}s")
        await asyncio.sleep(1)
        gc.freeze()  # the load client too: its full collections would pause every socket
        memory = {"rss_mb": rss_mb(pids),
                  "kb_per_connection": (rss_mb(pids) - rss_before) * 1024 / users}
        for name, count, rate in scenarios:
            checker = Checker()
            window.reset()
            for client in clients:
                client.checker = checker
            groups = {"nodes": pids, "postgres": postgres_pids(), "bench": [os.getpid()]}
            cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
            publisher_cpu = await run_publisher(
                ["node", "publisher.js", prefix, str(users), str(count), str(rate)],
                cache, env, checker)
            await until_delivered(checker, timeout=30)
            await asyncio.sleep(0.3)  # let stray duplicates show up
            cpu = {k: round(cpu_seconds(v) - cpu0[k], 2) for k, v in groups.items()}
            cpu["publisher"] = round(publisher_cpu, 2)
            result = window.result("Socket.IO + postgres-adapter", users, name, checker, cpu)
            log(f"socket.io U={users} {name}: {result}")
            results.append(result)
        for client in clients:
            await client.stop()
        gc.unfreeze()
    finally:
        for proc in nodes:
            proc.terminate()
            proc.wait()
    return results, memory
