"""The node-wide keepalive sweep (app/keepalive.py) and the event-loop lag metric
(app/looplag.py). The sweep is driven with explicit clocks; the lag is measured on a
real node whose loop is made to stall."""

from __future__ import annotations

import asyncio
import time

from app.hub import Hub
from app.keepalive import Keepalive
from tests.test_hardening import metric


class Peer:
    """A registered socket as the sweep sees it."""

    def __init__(self, user: str) -> None:
        self.user, self.cursor = user, 0
        self.expires_at = float("inf")
        self.last_pong = 0.0
        self.pings = 0
        self.closed = False
        self.answers = True

    def ping_now(self) -> None:
        self.pings += 1

    def expire(self) -> None:
        self.closed = True

    def close_dead(self) -> None:
        self.closed = True


def sweep_for(keepalive: Keepalive, peers: list[Peer], start: float, seconds: int) -> list[int]:
    """Run one sweep per second; peers that answer pong at once. Returns pings per sweep."""
    per_sweep = []
    for t in range(seconds):
        mono = start + t
        before = sum(p.pings for p in peers)
        keepalive.sweep(now=time.time(), mono=mono)
        for peer in peers:
            if peer.answers and not peer.closed:
                peer.last_pong = mono
        per_sweep.append(sum(p.pings for p in peers) - before)
    return per_sweep


def test_pings_are_spread_over_the_interval() -> None:
    hub = Hub()
    peers = [Peer(f"u{i}") for i in range(2000)]
    for peer in peers:
        peer.last_pong = 1000.0
        hub.add(peer)  # type: ignore[arg-type]
    keepalive = Keepalive(hub, ping_interval=10.0, tick=1.0)
    per_sweep = sweep_for(keepalive, peers, 1000.0, 10)
    assert [p.pings for p in peers] == [1] * 2000  # each once per interval
    assert max(per_sweep) < 2000 / 10 * 2, per_sweep  # never all at once


def test_a_silent_peer_is_closed_after_two_intervals_a_live_one_never() -> None:
    hub = Hub()
    live, silent = Peer("live"), Peer("silent")
    silent.answers = False
    for peer in (live, silent):
        peer.last_pong = 500.0
        hub.add(peer)  # type: ignore[arg-type]
    keepalive = Keepalive(hub, ping_interval=5.0, tick=1.0)
    sweep_for(keepalive, [live, silent], 500.0, 30)
    assert silent.closed and not live.closed
    assert 2 <= silent.pings <= 3 and live.pings == 6


async def test_event_loop_lag_is_measured(make_node) -> None:
    node = await make_node()
    before = await metric(node.port, 'herald_event_loop_lag_seconds_bucket{le="0.25"}')
    total_before = await metric(node.port, "herald_event_loop_lag_seconds_count")
    await asyncio.sleep(0.1)
    time.sleep(0.4)  # the loop is stuck: no timer can fire
    await asyncio.sleep(0.2)
    within = await metric(node.port, 'herald_event_loop_lag_seconds_bucket{le="0.25"}')
    total = await metric(node.port, "herald_event_loop_lag_seconds_count")
    assert total - total_before > within - before  # one sample was later than 0.25 s
    assert node.loopwatch.max >= 0.3
