"""The Herald publisher as a process of its own, like the peer's ``publisher.js``: N
single-row INSERTs, each in its own transaction, from 16 connections, to uniformly random
users ``PREFIX-u0 … PREFIX-u{USERS-1}``, each carrying its send time in ``data.sent``.

    python -m bench.publisher URL PREFIX USERS COUNT RATE   (RATE 0 = as fast as possible)

stdout: one ``user seq`` line per committed row, then ``cpu SECONDS`` (this process's own
CPU time, which the caller cannot read once the process has exited), then ``done``.
"""

from __future__ import annotations

import asyncio
import resource
import sys

from app import db
from herald_dev.loadgen import Publisher, sql_sender


class Committed:
    """The part of ``Checker`` a ``Publisher`` uses: it records what committed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def committed(self, user: str, seq: int) -> None:
        self.lines.append(f"{user} {seq}")


async def main(url: str, prefix: str, users: int, count: int, rate: float) -> None:
    pool = await db.create_pool(url, "bench-publisher", min_size=16, max_size=16)
    try:
        record = Committed()
        publisher = Publisher(sql_sender(pool), record,  # type: ignore[arg-type]
                              [f"{prefix}-u{i}" for i in range(users)])
        await publisher.run(rate or 1e9, count / (rate or 1e9))
    finally:
        await pool.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sys.stdout.write("\n".join(record.lines)
                     + f"\ncpu {usage.ru_utime + usage.ru_stime:.3f}\ndone\n")


if __name__ == "__main__":
    url, prefix, users, count, rate = sys.argv[1:6]
    asyncio.run(main(url, prefix, int(users), int(count), float(rate)))
