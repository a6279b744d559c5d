"""Background tasks: the one way this code base stops them."""

from __future__ import annotations

import asyncio
from typing import Any

# A cancellation can be lost: before Python 3.12, asyncio.wait_for returns the awaited
# operation's result when it finished in the same loop iteration as the cancel, and the
# task runs on (seen: the bus's liveness loop, 1 stop in 10 with a 10 ms ping). Often
# enough to cost a stop little; the tasks stopped here unwind at once (their clean-up
# terminates connections rather than await a goodbye), so a second cancel cuts nothing.
RECANCEL_EVERY = 0.1


async def cancel(task: "asyncio.Task[Any] | None") -> None:
    """Cancel ``task`` (if any) and wait until it has finished unwinding, cancelling it
    again every RECANCEL_EVERY seconds while it runs on. Re-raises what the task failed
    with, other than its cancellation."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_EVERY)
    if not task.cancelled():
        task.result()


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
