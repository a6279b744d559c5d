"""A local Herald cluster for development and tests: PostgreSQL, N ``herald serve``
processes and nginx (configured from ``docker/nginx.conf``) on one port.

``herald cluster --nodes 3 --port 8080`` (= ``python -m herald_dev.cluster``, with the
settings in the environment) runs one until Ctrl-C. Every process it starts is stopped
on exit. Given no database URL, ``LocalCluster`` runs its own embedded PostgreSQL in the
work directory, which ``restart_database()`` can restart (the tests do).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from app import db, schema
from herald_dev.net import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "docker" / "nginx.conf"




def render_nginx_conf(template: str, listen_port: int, node_ports: list[int]) -> str:
    """``docker/nginx.conf`` with the node addresses and the listen port replaced."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=0;" for p in node_ports)
    text, count = re.subn(r"# BEGIN herald nodes\n.*?# END herald nodes",
                          f"# BEGIN herald nodes\n{servers}\n        # END herald nodes",
                          template, flags=re.S)
    if count != 1:
        raise ValueError("nginx template lacks the BEGIN/END herald nodes markers")
    text, count = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen_port};", text)
    if count != 1:
        raise ValueError("nginx template must have exactly one listen directive")
    return text


class ClusterError(Exception):
    pass


class LocalCluster:
    def __init__(self, workdir: Path, nodes: int = 3, port: int = 0,
                 database_url: str | None = None, secret: str = "cluster-secret",
                 api_key: str = "cluster-api-key", node_env: dict[str, str] | None = None,
                 ) -> None:
        self.workdir = Path(workdir)
        self.count = nodes
        self.port = port or free_port()
        self.database_url = database_url or ""
        self.embedded = database_url is None
        self.secret, self.api_key = secret, api_key
        self.node_env = node_env or {}
        self.node_ports = [free_port() for _ in range(nodes)]
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.nginx: asyncio.subprocess.Process | None = None
        self._pgdata: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def node_name(self, i: int) -> str:
        return f"node-{i + 1}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.embedded:
            self._pgdata = self.workdir / "data" / "pg"
            self.database_url = await asyncio.to_thread(db.start_embedded,
                                                        self.workdir / "data")
        await asyncio.to_thread(schema.upgrade, self.database_url)
        await asyncio.gather(*(self.start_node(i) for i in range(self.count)))
        await self._start_nginx()

    async def start_node(self, i: int) -> None:
        env = {**os.environ, "HERALD_DATABASE_URL": self.database_url,
               "HERALD_SECRET": self.secret, "HERALD_API_KEY": self.api_key,
               "HERALD_PORT": str(self.node_ports[i]), "HERALD_HOST": "127.0.0.1",
               "HERALD_NODE": self.node_name(i), **self.node_env}
        log = open(self.workdir / f"{self.node_name(i)}.log", "ab")
        self.procs[i] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app.cli", "serve", cwd=ROOT, env=env,
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        log.close()
        await self.wait_ready(i)

    async def wait_ready(self, i: int, timeout: float = 30) -> None:
        client = AsyncHTTPClient()
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            proc = self.procs.get(i)
            if proc is not None and proc.returncode is not None:
                raise ClusterError(f"{self.node_name(i)} exited with {proc.returncode}; see "
                                   f"{self.workdir / (self.node_name(i) + '.log')}")
            try:
                response = await client.fetch(
                    f"http://127.0.0.1:{self.node_ports[i]}/readyz", raise_error=False,
                    request_timeout=2)
                if response.code == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise ClusterError(f"{self.node_name(i)} not ready after {timeout}s")

    async def sockets_per_node(self) -> list[int]:
        """Each node's ``herald_connections``, from its /metrics (0 for a node down)."""
        client = AsyncHTTPClient()
        counts = []
        for port in self.node_ports:
            value = 0.0
            try:
                response = await client.fetch(f"http://127.0.0.1:{port}/metrics",
                                              raise_error=False, request_timeout=5)
            except OSError:
                response = None
            if response is not None and response.code == 200:
                for line in response.body.decode().splitlines():
                    if line.startswith("herald_connections "):
                        value = float(line.split()[1])
            counts.append(int(value))
        return counts

    async def stop_node(self, i: int, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal node ``i`` and wait for it to exit; return its exit status."""
        proc = self.procs.pop(i)
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ClusterError(
                f"{self.node_name(i)} ignored signal {sig} for {timeout}s"
            ) from None

    async def restart_node(self, i: int) -> None:
        await self.stop_node(i)
        await self.start_node(i)

    async def restart_database(self) -> None:
        """Restart the embedded PostgreSQL (fast shutdown: every connection is cut)."""
        if self._pgdata is None:
            raise ClusterError("only the cluster's own embedded PostgreSQL can be restarted")
        await self._pg_ctl("-w", "-m", "fast", "-l", str(self._pgdata / "log"), "restart")

    async def _pg_ctl(self, *args: str) -> None:
        """pgserver's own pg_ctl, as the user that owns the data directory."""
        from herald_dev.pgbin import BIN, server_ids

        command = [str(BIN / "pg_ctl"), "-D", str(self._pgdata), *args]
        uid, gid = server_ids()
        result = await asyncio.to_thread(lambda: subprocess.run(
            command, capture_output=True, text=True, timeout=60, user=uid, group=gid))
        if result.returncode != 0:
            raise ClusterError(f"pg_ctl {' '.join(args)}: {result.stderr.strip()[-300:]}")

    async def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise ClusterError("nginx is not installed (Debian: apt-get install nginx)")
        conf = self.workdir / "nginx.conf"
        conf.write_text(render_nginx_conf(NGINX_TEMPLATE.read_text(), self.port,
                                          self.node_ports))
        log = open(self.workdir / "nginx.log", "ab")
        self.nginx = await asyncio.create_subprocess_exec(
            nginx, "-c", str(conf), "-p", str(self.workdir), "-g",
            f"daemon off; pid {self.workdir / 'nginx.pid'}; "
            f"error_log {self.workdir / 'nginx-error.log'} warn;",
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL)
        log.close()
        client = AsyncHTTPClient()
        for _ in range(100):
            if self.nginx.returncode is not None:
                raise ClusterError(f"nginx exited: {(self.workdir / 'nginx-error.log')}")
            try:
                response = await client.fetch(f"{self.url}/healthz", raise_error=False)
                if response.code == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.05)
        raise ClusterError("nginx did not come up")

    async def stop(self) -> None:
        """Stop nginx and every node (SIGTERM, then SIGKILL), then the database."""
        if self.nginx is not None and self.nginx.returncode is None:
            self.nginx.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(self.nginx.wait(), 10)
            except asyncio.TimeoutError:
                self.nginx.kill()
                await self.nginx.wait()
        for i in list(self.procs):
            try:
                await self.stop_node(i)
            except ClusterError:
                pass
        if self._pgdata is not None:
            try:
                await self._pg_ctl("-w", "-m", "fast", "stop")
            except ClusterError:  # already stopped (pg_ctl exits non-zero then)
                pass


def main(argv: list[str] | None = None) -> int:
    """``herald cluster``: the settings come from the environment (the CLI puts its flags
    there), the shape from ``--nodes`` and ``--port``."""
    import argparse

    from app.config import ConfigError, load_config

    parser = argparse.ArgumentParser(prog="herald cluster")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        config = load_config()
        url = config.database_url or db.start_embedded(config.data_dir)
    except (ConfigError, RuntimeError) as err:
        print(f"herald: error: {err}", file=sys.stderr)
        return 2
    node_env = {"HERALD_DEV": "1" if config.dev else "0"}
    if config.allowed_origins:
        node_env["HERALD_ALLOWED_ORIGINS"] = ",".join(config.allowed_origins)

    async def run() -> None:
        cluster = LocalCluster(config.data_dir / "cluster", nodes=args.nodes, port=args.port,
                               database_url=url, secret=config.secret,
                               api_key=config.api_key or "", node_env=node_env)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start()
            print(f"herald: {args.nodes} nodes behind nginx at {cluster.url} "
                  f"(WebSocket {cluster.ws_url}); logs in {cluster.workdir}",
                  file=sys.stderr, flush=True)
            if config.dev:
                print(f"herald: dev login at {cluster.url}/login", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            await cluster.stop()

    try:
        asyncio.run(run())
    except ClusterError as err:
        print(f"herald: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
