"""A real PgBouncer (Debian's package) in transaction pooling mode in front of the test
PostgreSQL: what production deployments usually put between the writers and the
database. As root it runs as the ``pgserver`` user (PgBouncer refuses root)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from herald_dev.net import free_port
from herald_dev.pgbin import server_user

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PgBouncer:
    def __init__(self, upstream_url: str, pool_mode: str = "transaction"):
        parts = urlsplit(upstream_url)
        self.database = parts.path.lstrip("/") or "postgres"
        self.user = parts.username or "postgres"
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        self.upstream = f"host={host} port={parts.port or 5432}"
        # Its own directory in /tmp: PgBouncer runs as another user, who cannot enter
        # pytest's private temporary directories.
        self.workdir = Path(tempfile.mkdtemp(prefix="herald-pgbouncer-"))
        self.pool_mode = pool_mode
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    async def start(self) -> None:
        assert Path(BINARY).exists(), "pgbouncer is not installed (scripts/test installs it)"
        self.workdir.chmod(0o777)
        (self.workdir / "users.txt").write_text(f'"{self.user}" ""\n')
        conf = self.workdir / "pgbouncer.ini"
        conf.write_text(
            f"[databases]\n* = {self.upstream}\n\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.workdir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            "default_pool_size = 8\nignore_startup_parameters = extra_float_digits\n"
            "max_client_conn = 200\n"
            f"logfile = {self.workdir / 'pgbouncer.log'}\n")
        for path in self.workdir.iterdir():
            path.chmod(0o644)
        self.proc = subprocess.Popen([BINARY, str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, **server_user())  # type: ignore[call-overload]
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text()[-2000:] if path.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await asyncio.to_thread(self.proc.wait, 10)
        shutil.rmtree(self.workdir, ignore_errors=True)
