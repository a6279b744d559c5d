"""The database's own ceiling, measured with pgbench on the benchmark database: a
single-row INSERT with Herald's triggers notifying at COMMIT, the same INSERT while the
relay's lease is held (the triggers stamp rows for the relay instead of notifying), the
same INSERT on a copy of the table with no NOTIFY trigger at all, and NOTIFY alone, each
at 1, 4 and 16 clients."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import asyncpg

from app import db

RELAYED = "insert, relay lease held (Herald's triggers, no NOTIFY)"
SCRIPTS = {
    "insert + NOTIFY (Herald's triggers)":
        "INSERT INTO herald.notifications (user_id, title) "
        "VALUES ('pgb' || (random() * 1000)::int, 'bench');\n",
    RELAYED:
        "INSERT INTO herald.notifications (user_id, title) "
        "VALUES ('pgb' || (random() * 1000)::int, 'bench');\n",
    "insert, no NOTIFY":
        "INSERT INTO bench_ceiling.notifications (user_id, title) "
        "VALUES ('pgb' || (random() * 1000)::int, 'bench');\n",
    "NOTIFY alone": "SELECT pg_notify('bench_ceiling', 'x');\n",
}
CLIENTS = (1, 4, 16)


@dataclass
class CeilingResult:
    script: str
    clients: int
    tps: float


def pgbench_binary() -> str:
    for candidate in (shutil.which("pgbench"), "/usr/lib/postgresql/15/bin/pgbench"):
        if candidate and Path(candidate).exists():
            return candidate
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "pgbench")


def _conn_args(url: str) -> list[str]:
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    return ["-h", host, "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
            parts.path.lstrip("/") or "postgres"]


def prepare(sql: Callable[[str], object]) -> None:
    """``sql(statement)`` runs one statement: a copy of the table that has the seq
    trigger but no NOTIFY trigger, for the "no NOTIFY" line."""
    sql("CREATE SCHEMA IF NOT EXISTS bench_ceiling")
    sql("DROP TABLE IF EXISTS bench_ceiling.notifications")
    sql("CREATE TABLE bench_ceiling.notifications "
        "(LIKE herald.notifications INCLUDING DEFAULTS INCLUDING IDENTITY)")
    sql("CREATE TRIGGER assign_seq BEFORE INSERT ON bench_ceiling.notifications "
        "FOR EACH ROW EXECUTE FUNCTION herald.assign_seq()")


def _lease(url: str, held: bool) -> None:
    async def set_lease() -> None:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            await conn.execute("UPDATE herald.relay SET batched_until = "
                               + ("now() + interval '1 hour'" if held else "'-infinity'"))
        finally:
            await conn.close()

    asyncio.run(set_lease())


def run(url: str, seconds: int = 5) -> list[CeilingResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script in SCRIPTS.items():
            _lease(url, name == RELAYED)
            path = Path(tmp) / "script.sql"
            path.write_text(script)
            for clients in CLIENTS:
                out = subprocess.run(
                    [pgbench_binary(), "-n", "-f", str(path), "-c", str(clients),
                     "-j", str(min(clients, 2)), "-T", str(seconds), *_conn_args(url)],
                    capture_output=True, text=True, check=True)
                match = re.search(r"tps = ([\d.]+)", out.stdout)
                assert match, out.stdout + out.stderr
                results.append(CeilingResult(name, clients, float(match[1])))
    _lease(url, False)
    return results
