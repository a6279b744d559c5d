"""Token buckets: one per socket for its frames and its acks, one per user for HTTP.

A bucket holds at most ``burst`` tokens and gains ``rate`` per second; each request takes
one. Pure arithmetic on a monotonic clock, no tasks and no I/O.
"""

from __future__ import annotations

import math
import time
from typing import Callable


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_at", "_clock")

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def take(self) -> bool:
        """Take one token; False (taking nothing) when the bucket is empty."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds until a token is there again (0 if one is)."""
        missing = 1 - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def full_at(self) -> float:
        """When (on the bucket's clock) it will be full again: forgetting it then is free."""
        return self._at + (self.burst - self._tokens) / self.rate


class KeyedLimiter:
    """A bucket per key (a user, say), created on first use. Buckets that have refilled
    are forgotten whenever the map grows past ``max_keys``, so memory follows the
    number of keys active within ``burst / rate`` seconds, not every key ever seen."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when allowed, else the seconds to wait (> 0)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full()
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        if bucket.take():
            return 0.0
        return max(bucket.wait(), 1e-3)

    def _forget_full(self) -> None:
        now = self._clock()
        for key in [k for k, b in self._buckets.items() if b.full_at() <= now]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
