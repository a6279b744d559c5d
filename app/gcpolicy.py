"""Garbage collection for a node process holding thousands of long-lived sockets.

Measured (bench/, 3,333 sockets per node): CPython's full collections walked every
socket's objects again and again, finding nothing to free, and paused the node for up to
0.6 s each, growing with the number of sockets: seconds of p90 latency at 10,000 users.

Policy: every ``interval`` seconds, move everything that survived so far into the
permanent generation (``gc.freeze()``), so routine collections only look at new objects.
Reference counting still frees closed connections at once; only *cyclic* garbage among
frozen objects waits, until the full collection every ``full_every`` seconds (one pause
of the old kind, rarely). Process-wide: ``herald serve`` starts it; tests, which run
several nodes in one process, do not.
"""

from __future__ import annotations

import asyncio
import gc


async def freeze_periodically(interval: float = 10.0, full_every: float = 3600.0) -> None:
    """Run until cancelled."""
    elapsed = 0.0
    gc.freeze()
    while True:
        await asyncio.sleep(interval)
        elapsed += interval
        if elapsed >= full_every:
            elapsed = 0.0
            gc.unfreeze()
            gc.collect()
        gc.freeze()
