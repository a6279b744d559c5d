"""A Jepsen-style delivery checker, reusable by tests and benchmarks.

The publisher records every (user, seq) whose INSERT it saw commit; every client records
each (user, seq) it receives, in arrival order. ``report()`` then says, per user and in
total, what was lost (committed, never received), duplicated (received more than once)
and out of order (received after a higher seq of the same user). A seq received but
never confirmed committed (its COMMIT's answer was lost with the connection) is
*unconfirmed*: indeterminate, not an error.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class UserReport:
    lost: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    out_of_order: list[int] = field(default_factory=list)
    unconfirmed: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order)


@dataclass
class Report:
    users: dict[str, UserReport]
    committed: int
    received: int

    def total(self, kind: str) -> int:
        return sum(len(getattr(r, kind)) for r in self.users.values())

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.users.values())

    def summary(self) -> str:
        return (
            f"committed={self.committed} received={self.received} "
            f"lost={self.total('lost')} duplicated={self.total('duplicated')} "
            f"out_of_order={self.total('out_of_order')} "
            f"unconfirmed={self.total('unconfirmed')}"
        )

    def failures(self, limit: int = 5) -> dict[str, UserReport]:
        bad = {u: r for u, r in self.users.items() if not r.ok}
        return dict(list(bad.items())[:limit])


class Checker:
    def __init__(self) -> None:
        self._committed: dict[str, set[int]] = defaultdict(set)
        self._received: dict[str, list[int]] = defaultdict(list)

    def committed(self, user: str, seq: int) -> None:
        """The publisher saw this notification's transaction commit."""
        self._committed[user].add(seq)

    def received(self, user: str, seq: int) -> None:
        """A client of ``user`` received ``seq`` (call in arrival order)."""
        self._received[user].append(seq)

    def received_count(self) -> int:
        return sum(len(v) for v in self._received.values())

    def committed_count(self) -> int:
        return sum(len(v) for v in self._committed.values())

    def report(self) -> Report:
        users: dict[str, UserReport] = {}
        for user in set(self._committed) | set(self._received):
            report = UserReport()
            seen: set[int] = set()
            highest = 0
            for seq in self._received.get(user, []):
                if seq in seen:
                    report.duplicated.append(seq)
                    continue
                seen.add(seq)
                if seq < highest:
                    report.out_of_order.append(seq)
                highest = max(highest, seq)
            committed = self._committed.get(user, set())
            report.lost = sorted(committed - seen)
            report.unconfirmed = sorted(seen - committed)
            users[user] = report
        return Report(users, self.committed_count(), self.received_count())
