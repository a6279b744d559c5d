"""A PostgreSQL primary with a synchronous streaming standby, for failover tests.

Built from the PostgreSQL binaries the ``pgserver`` package ships (initdb, pg_ctl,
pg_basebackup): the primary and the standby listen on TCP ports of 127.0.0.1, every
commit waits for the standby (``synchronous_standby_names = '*'``), and the test can
crash the primary (``pg_ctl stop -m immediate``) and promote the standby. As root, the
servers run as the ``pgserver`` user, as pgserver itself does.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

from herald_dev.net import free_port
from herald_dev.pgbin import BIN, server_user


class PgPair:
    def __init__(self) -> None:
        # Its own directory in /tmp: the servers run as another user, who cannot enter
        # pytest's private temporary directories.
        self.root = Path(tempfile.mkdtemp(prefix="herald-pgpair-"))
        self.ports = [free_port(), free_port()]
        self.dirs = [self.root / "primary", self.root / "standby"]
        self.running = [False, False]

    def url(self, database: str = "postgres", attrs: str = "read-write") -> str:
        """Both hosts, libpq style: the clients find whichever is the primary."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs={attrs}"

    def direct_url(self, i: int, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[i]}/{database}"

    async def _run(self, *args: str, timeout: float = 120) -> str:
        result = await asyncio.to_thread(
            subprocess.run, [str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
            timeout=timeout, **server_user())
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    async def start(self) -> None:
        self.root.chmod(0o777)
        primary, standby = self.dirs
        await self._run("initdb", "-D", str(primary), "-A", "trust", "-U", "postgres",
                        "--no-sync")
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                "wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\n"
                "synchronous_standby_names = '*'\nsynchronous_commit = on\n"
                "fsync = off\nshared_buffers = 32MB\nmax_connections = 200\n")
        with open(primary / "pg_hba.conf", "a") as hba:
            hba.write("\nhost replication all 127.0.0.1/32 trust\n"
                      "host all all 127.0.0.1/32 trust\n")
        await self._start(0)
        await self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[0]),
                        "-U", "postgres", "-D", str(standby), "-R", "-X", "stream")
        # Promoted, the standby has no standby of its own: it must not wait for one.
        with open(standby / "postgresql.auto.conf", "a") as conf:
            conf.write("\nsynchronous_standby_names = ''\n")
        await self._start(1)

    async def _start(self, i: int) -> None:
        await self._run("pg_ctl", "-D", str(self.dirs[i]), "-w", "-t", "60",
                        "-o", f"-p {self.ports[i]}", "-l", str(self.dirs[i] / "server.log"),
                        "start")
        self.running[i] = True

    async def crash_primary(self) -> None:
        """The primary dies without a checkpoint or a goodbye (as a machine would)."""
        await self._run("pg_ctl", "-D", str(self.dirs[0]), "-m", "immediate", "stop")
        self.running[0] = False

    async def promote_standby(self) -> None:
        await self._run("pg_ctl", "-D", str(self.dirs[1]), "-w", "promote")

    async def stop(self) -> None:
        for i in (1, 0):
            if self.running[i]:
                try:
                    await self._run("pg_ctl", "-D", str(self.dirs[i]), "-m", "immediate",
                                    "stop", timeout=30)
                except RuntimeError:
                    pass
                self.running[i] = False
        shutil.rmtree(self.root, ignore_errors=True)
