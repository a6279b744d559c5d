"""app.gcpolicy: survivors leave the collector's sight, cyclic garbage is still freed."""

from __future__ import annotations

import asyncio
import gc
import weakref

from app import gcpolicy, tasks


class Cyclic:
    def __init__(self) -> None:
        self.me = self  # only the cycle collector can free this


async def test_freezes_survivors_and_the_full_collection_still_frees_cycles() -> None:
    gc.unfreeze()
    task = asyncio.create_task(gcpolicy.freeze_periodically(interval=0.05, full_every=0.6))
    try:
        obj = Cyclic()
        ref = weakref.ref(obj)
        await asyncio.sleep(0.12)  # at least one freeze since obj was made
        assert gc.get_freeze_count() > 0
        del obj
        gc.collect()
        assert ref() is not None  # frozen: an ordinary collection does not look at it
        for _ in range(40):
            await asyncio.sleep(0.05)
            if ref() is None:
                break
        assert ref() is None  # the periodic full collection did
    finally:
        await tasks.cancel(task)
        gc.unfreeze()
