"""The node-wide keepalive sweep (app/keepalive.py) and the event-loop lag metric
(app/looplag.py). The sweep is driven with explicit clocks; the lag is measured on a
real node whose loop is made to stall."""

from __future__ import annotations

import asyncio
import time

from app.hub import Hub
from app.keepalive import Keepalive
from tests.helpers import metric

CLOCK = [0.0]  # the monotonic time of the sweep being run


class Peer:
    """A registered socket as the sweep sees it."""

    def __init__(self, user: str) -> None:
        self.user, self.cursor = user, 0
        self.expires_at = float("inf")
        self.last_pong = 0.0
        self.ping_sent_at = 0.0
        self.pings = 0
        self.closed = False
        self.answers = True
        self.closed_at: float | None = None

    def ping_now(self) -> None:
        self.pings += 1
        if self.last_pong >= self.ping_sent_at:
            self.ping_sent_at = CLOCK[0]

    def expire(self) -> None:
        self.closed = True

    def close_dead(self) -> None:
        if not self.closed:
            self.closed_at = CLOCK[0]
        self.closed = True


def sweep_for(keepalive: Keepalive, peers: list[Peer], start: float, seconds: float,
              tick: float = 1.0) -> list[int]:
    """Run one sweep per tick; peers that answer pong at once. Returns pings per sweep."""
    per_sweep = []
    for t in range(int(seconds / tick)):
        mono = CLOCK[0] = start + t * tick
        before = sum(p.pings for p in peers)
        keepalive.sweep(now=time.time(), mono=mono)
        for peer in peers:
            if peer.answers and not peer.closed and peer.ping_sent_at > peer.last_pong:
                peer.last_pong = mono + 0.001
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


def test_a_peer_that_dies_is_closed_within_interval_plus_pong_timeout() -> None:
    """docs/protocol.md "Liveness": whenever a peer stops answering (right after a pong is the
    worst case), it is closed within ping interval + pong timeout; a live one never."""
    for interval, timeout in ((5.0, 2.0), (25.0, 10.0), (2.0, 1.0)):
        hub = Hub()
        live, silent = Peer("live"), Peer("silent")
        for peer in (live, silent):
            peer.last_pong = 500.0
            hub.add(peer)  # type: ignore[arg-type]
        keepalive = Keepalive(hub, ping_interval=interval, pong_timeout=timeout)
        tick = keepalive._tick
        sweep_for(keepalive, [live, silent], 500.0, 3 * interval, tick)
        died = silent.last_pong  # it answered up to here, then never again
        silent.answers = False
        sweep_for(keepalive, [live, silent], 500.0 + 3 * interval, 3 * interval + 2 * timeout,
                  tick)
        assert silent.closed and not live.closed, (interval, timeout)
        assert silent.closed_at is not None
        assert silent.closed_at - died <= interval + timeout, (interval, timeout,
                                                               silent.closed_at - died)
        assert live.pings >= 5


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
