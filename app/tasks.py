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
