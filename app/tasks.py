"""Background tasks: the one way this code base stops them."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel(task: "asyncio.Task[Any] | None") -> None:
    """Cancel ``task`` (if any) and wait until it has finished unwinding."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def describe_all() -> str:
    """What every task of the running loop is waiting on: its name and its chain of
    awaits, innermost first (for a log line when something does not stop)."""
    lines = []
    for task in asyncio.all_tasks():
        where = []
        coro: Any = task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:
            frame = coro.cr_frame
            where.append(f"{frame.f_code.co_name} "
                         f"({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})")
            coro = getattr(coro, "cr_await", None)
        lines.append(f"  {task.get_name()}: {' <- '.join(reversed(where)) or 'running'}")
    return "\n".join(sorted(lines))
