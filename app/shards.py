"""User shards: which bus channels carry a user's announcements (revision 0011).

Every user belongs to one of ``SHARDS`` shards: the first four bytes of the MD5 of the
user id's UTF-8 bytes, big-endian, modulo ``SHARDS``. ``herald.shard_of()`` in the
database and ``shardOf()`` in static/herald.js compute the same number
(tests/test_shards.py holds the three together). A shard's pointers and read-state
changes go on channel ``herald_<shard>``, its inline frames on ``<private>_<shard>``;
a node listens to the shards of its local users only, so a commit wakes the nodes that
hold its user's sockets and no other.

The shard is also the routing key: a client connects with ``?shard=<n>`` and the load
balancer hashes on it (docker/nginx.conf), so all users of a shard land on one node and
each node listens to few shards. A wrong or missing key costs efficiency, never
correctness: the node listens to whatever shards its sockets need.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

SHARDS = 64  # fixed in the schema: herald.shard_of() (revision 0011)


def shard_of(user: str) -> int:
    digest = hashlib.md5(user.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % SHARDS


def channel(base: str, shard: int) -> str:
    """The channel of ``shard``'s part of channel ``base`` (public or private)."""
    return f"{base}_{shard}"


def parse_routing_key(value: str | None) -> int | None:
    """The ``shard`` query argument of a WebSocket URL: a shard number, or None when it
    is absent or not one (the load balancer's key; the node only counts a wrong one)."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 3:
        return None
    shard = int(value)
    return shard if shard < SHARDS else None


class ShardBus(Protocol):
    """What ``UserShards`` needs of app.bus.Bus."""

    def want(self, shard: int) -> None: ...

    def unwant(self, shard: int) -> None: ...

    async def ready(self, shard: int) -> None: ...


class UserShards:
    """A bus's interest in shards, spoken in users (app.dispatch.Interest): the hub holds
    each registered user, a starting session its user until registered."""

    def __init__(self, bus: ShardBus) -> None:
        self._bus = bus

    def want(self, user: str) -> None:
        self._bus.want(shard_of(user))

    def unwant(self, user: str) -> None:
        self._bus.unwant(shard_of(user))

    async def ready(self, user: str) -> None:
        await self._bus.ready(shard_of(user))
