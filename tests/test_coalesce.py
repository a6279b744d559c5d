"""app/coalesce.py: concurrent requests share batches; a lone request is not delayed;
an error reaches every waiter of its batch and no other. Plus the node-level effect: a
storm of sessions starting together is served right, with far fewer queries."""

from __future__ import annotations

import asyncio
from typing import Sequence

import pytest

from app.coalesce import Coalescer
from tests.conftest import token_for


async def test_requests_made_while_a_batch_runs_share_the_next_one() -> None:
    batches: list[list[int]] = []

    async def run(keys: Sequence[int]) -> list[int]:
        batches.append(list(keys))
        await asyncio.sleep(0.01)
        return [k * 10 for k in keys]

    square = Coalescer(run)
    results = await asyncio.gather(*(square(i) for i in range(100)))
    assert results == [i * 10 for i in range(100)]
    assert sum(len(b) for b in batches) == 100 and len(batches) <= 2
    assert await square(7) == 70  # alone, at once
    assert batches[-1] == [7]


async def test_an_error_reaches_its_batch_only() -> None:
    async def run(keys: Sequence[str]) -> list[str]:
        await asyncio.sleep(0.01)
        if "bad" in keys:
            raise ValueError("boom")
        return list(keys)

    echo = Coalescer(run)
    first = asyncio.ensure_future(echo("a"))  # starts a batch of its own at once
    await asyncio.sleep(0)
    second = asyncio.gather(echo("bad"), echo("b"), return_exceptions=True)  # queued
    assert await first == "a"
    outcomes = await second
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await asyncio.gather(echo("x"), echo("y")) == ["x", "y"]  # not poisoned


async def test_a_batch_error_is_raised_to_each_waiter() -> None:
    async def run(keys: Sequence[int]) -> list[int]:
        raise RuntimeError("database gone")

    failing = Coalescer(run)
    outcomes = await asyncio.gather(*(failing(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    with pytest.raises(RuntimeError):
        await failing(9)


async def test_a_session_storm_is_served_right_with_few_queries(
    make_node, clients, sql, user
) -> None:
    node = await make_node()
    users = [f"{user}-{i}" for i in range(60)]
    await sql.execute("INSERT INTO herald.notifications (user_id, title) "
                      "SELECT u, 'missed ' || g FROM unnest($1::text[]) u, "
                      "generate_series(1, 20) g ORDER BY u, g", users)
    starts = node.dispatcher._session_start  # type: ignore[union-attr]
    runs = 0
    original = starts._run

    async def counting(keys):  # type: ignore[no-untyped-def]
        nonlocal runs
        runs += 1
        return await original(keys)

    starts._run = counting
    socks = await asyncio.gather(*(clients(node.port) for _ in users))
    welcomes = await asyncio.gather(*(s.hello(token_for(u), last_seq=5)
                                      for s, u in zip(socks, users, strict=True)))
    assert all(w["last_seq"] == 20 for w in welcomes)
    for sock in socks:
        assert [f["seq"] for f in await sock.notifications(15)] == list(range(6, 21))
    assert runs < len(users) / 3, runs
