"""Exponential backoff: the one way Herald waits before trying again.

``next()`` gives the delay to wait now (with ``jitter``, anywhere from half to one and a
half times it, so that many clients or nodes that failed together do not retry
together) and doubles the next one, up to ``maximum``; ``reset()`` after a success.
"""

from __future__ import annotations

import random
from typing import Callable


class Backoff:
    __slots__ = ("initial", "maximum", "jitter", "_delay", "_random")

    def __init__(self, initial: float, maximum: float, jitter: bool = False,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._delay = initial
        self._random = rand

    def next(self) -> float:
        """The delay to wait before the next try; the one after it doubles."""
        delay = self._delay * (0.5 + self._random()) if self.jitter else self._delay
        self._delay = min(self._delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """It worked: the next failure waits ``initial`` again."""
        self._delay = self.initial
