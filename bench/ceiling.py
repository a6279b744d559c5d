"""The database's own ceiling, measured with pgbench on the benchmark database: a
single-row INSERT with Herald's triggers notifying at COMMIT, the same INSERT while the
relay's lease is held (the triggers stamp rows for the relay instead of notifying), the
same INSERT with the two NOTIFY triggers disabled for the run (Herald's functions serve
Herald's table only, revision 0009, so no copy of the table can borrow them), and NOTIFY
alone, each at 1, 4 and 16 clients. The benchmark database is the bench's own."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from app import db

RELAYED = "insert, relay lease held (Herald's triggers, no NOTIFY)"
NO_NOTIFY = "insert, no NOTIFY"
NOTIFY_TRIGGERS = ("notify_inserted", "notify_frame")
SCRIPTS = {
    "insert + NOTIFY (Herald's triggers)":
        "INSERT INTO herald.notifications (user_id, title) "
        "VALUES ('pgb' || (random() * 1000)::int, 'bench');\n",
    RELAYED:
        "INSERT INTO herald.notifications (user_id, title) "
        "VALUES ('pgb' || (random() * 1000)::int, 'bench');\n",
    NO_NOTIFY:
        "INSERT INTO herald.notifications (user_id, title) "
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


def _set(url: str, *statements: str) -> None:
    async def execute() -> None:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute())


def _lease(url: str, held: bool) -> None:
    _set(url, "UPDATE herald.relay SET batched_until = "
         + ("now() + interval '1 hour'" if held else "'-infinity'"))


def _notify_triggers(url: str, enabled: bool) -> None:
    verb = "ENABLE" if enabled else "DISABLE"
    _set(url, *(f"ALTER TABLE herald.notifications {verb} TRIGGER {name}"
                for name in NOTIFY_TRIGGERS))


def run(url: str, seconds: int = 5) -> list[CeilingResult]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script in SCRIPTS.items():
            _lease(url, name == RELAYED)
            _notify_triggers(url, name != NO_NOTIFY)
            path = Path(tmp) / "script.sql"
            path.write_text(script)
            try:
                for clients in CLIENTS:
                    out = subprocess.run(
                        [pgbench_binary(), "-n", "-f", str(path), "-c", str(clients),
                         "-j", str(min(clients, 2)), "-T", str(seconds), *_conn_args(url)],
                        capture_output=True, text=True, check=True)
                    match = re.search(r"tps = ([\d.]+)", out.stdout)
                    assert match, out.stdout + out.stderr
                    results.append(CeilingResult(name, clients, float(match[1])))
            finally:
                _notify_triggers(url, True)
    _lease(url, False)
    return results
