"""One Herald node, assembled and run: pool, store, hub, dispatcher, bus, HTTP server.

``HeraldServer`` is what ``herald serve`` runs and what the tests start (several in one
process, each with its own registry, pool and LISTEN connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Awaitable

import tornado.httpserver
import tornado.netutil

from app import db, models, protocol, schema, shards, tasks
from app.bus import Bus
from app.config import Config, ConfigError
from app.dispatch import Dispatcher
from app.heartbeats import Heartbeats
from app.hub import Hub
from app.keepalive import Keepalive
from app.looplag import Loopwatch
from app.membership import Membership
from app.metrics import Metrics
from app.relay import Relay
from app.retention import Pruner, RetentionStore
from app.store import Store
from app.web import make_app

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


class HeraldServer:
    def __init__(self, config: Config, database_url: str) -> None:
        self.config = config
        self.database_url = database_url
        self.metrics = Metrics()
        self.hub = Hub(config.max_connections, config.max_connections_per_user,
                       config.max_waiting_sockets, config.max_waiting_sockets_per_ip)
        self.port = 0
        self._pool: object = None
        self._bus: Bus | None = None
        self.relay: Relay | None = None
        self._keepalive: Keepalive | None = None
        self.pruner: Pruner | None = None
        self.membership: Membership | None = None
        self.loopwatch = Loopwatch(self.metrics.loop_lag.observe)
        self._worker: asyncio.Task[None] | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.stuck: list[str] = []  # the steps of stop() that did not end in time

    async def start(self) -> None:
        """Connect, verify the schema is at head, listen, then accept connections.
        Raises ``schema.SchemaError`` or a connection error if the database is not usable."""
        name = self.config.node
        bus_url = self.bus_url
        if await db.behind_transaction_pooler(bus_url, f"herald:{name}:probe"[:63]):
            variable = ("HERALD_BUS_DATABASE_URL" if self.config.bus_database_url
                        else "HERALD_DATABASE_URL")
            raise ConfigError(
                f"{variable} goes through a pooler in transaction mode, where LISTEN does "
                "not work: set HERALD_BUS_DATABASE_URL to a direct connection to PostgreSQL "
                "(the pool may stay on the pooler)")
        behind_pooler = bus_url != self.database_url and await db.behind_transaction_pooler(
            self.database_url, f"herald:{name}:probe"[:63])
        if behind_pooler:
            log.info("the pool goes through a transaction pooler: statements in transactions")
        pool = await db.create_pool(self.database_url, f"herald:{name}"[:63],
                                    behind_pooler=behind_pooler)
        self._pool = pool
        try:
            async with pool.acquire() as conn:
                await schema.check_at_head(conn)
        except BaseException:
            await pool.close()
            raise
        store = Store(pool, behind_pooler=behind_pooler)
        heartbeats = Heartbeats(pool, behind_pooler=behind_pooler)
        deletes = RetentionStore(pool, behind_pooler=behind_pooler)
        self.dispatcher = dispatcher = Dispatcher(name, store, self.hub, self.metrics)
        self._worker = asyncio.create_task(dispatcher.run(), name="herald-dispatcher")
        self._bus = bus = Bus(
            bus_url,
            models.CHANNEL,
            dispatcher.enqueue,
            dispatcher.on_listening,
            application_name=f"herald:{name}:bus"[:63],
            ping_interval=self.config.bus_ping_interval,
            linger=self.config.shard_linger,
        )
        # The bus listens to the shards of local users, before their sessions' reads.
        interest = shards.UserShards(bus)
        self.hub.on_first, self.hub.on_last = interest.want, interest.unwant
        dispatcher.interest = interest
        self.metrics.connections.set_function(self.hub.count)
        self.metrics.bus_connected.set_function(lambda: 1 if bus.connected else 0)
        self.metrics.notify_queue.set_function(lambda: bus.queue_usage)
        self.metrics.shards.set_function(lambda: len(bus.shards()))
        await bus.start()
        # Every node stands for relay; one leads (app/relay.py). Started after LISTEN is up
        # so this node hears its own sync.
        self.relay = relay = Relay(bus_url, name,
                                   threshold=self.config.relay_threshold,
                                   interval=self.config.relay_interval)
        self.metrics.relay_leader.set_function(lambda: 1 if relay.leader else 0)
        self.metrics.relay_batched.set_function(lambda: 1 if relay.batched else 0)
        relay.start()
        # Retention runs on the relay's leader only: one pruning node per cluster.
        self.pruner = Pruner(deletes, self.config.retention_days, lambda: relay.leader,
                             self.metrics.pruned.inc, interval=self.config.prune_interval,
                             batch=self.config.prune_batch, pause=self.config.prune_pause)
        self.pruner.start()
        self.membership = Membership(
            heartbeats, self.hub, name, lambda: relay.leader, self.metrics.shed.inc,
            shards=bus.shards,
            interval=self.config.heartbeat_interval, rate=self.config.rebalance_rate)
        self.membership.start()
        self._keepalive = Keepalive(self.hub, self.config.ws_ping_interval,
                                    self.config.ws_pong_timeout)
        self._keepalive.start()
        self.loopwatch.start()
        app = make_app(
            self.config, dispatcher, store, self.metrics,
            bus_connected=lambda: bus.connected, draining=lambda: self.hub.draining,
            queue_usage=lambda: bus.queue_usage, hub=self.hub,
        )
        self._http = tornado.httpserver.HTTPServer(
            # No xheaders: a proxy's headers are believed only from HERALD_TRUSTED_PROXIES
            # (app/web.py, app/proxies.py).
            app, xheaders=False, max_body_size=MAX_BODY_BYTES
        )
        sockets = tornado.netutil.bind_sockets(
            self.config.port, self.config.host or None, family=socket.AF_UNSPEC
        )
        self.port = sockets[0].getsockname()[1]
        self._http.add_sockets(sockets)
        log.info("node %s listening on port %d", name, self.port)

    async def stop(self) -> None:
        """Graceful stop: fail /readyz, close every socket with 1001 (clients reconnect
        elsewhere at once), stop accepting, then release the database. Each step is
        given ``shutdown_grace`` seconds: one that hangs is named in ``stuck`` (with
        what every task was doing, in the log) and left behind, so a stopping node
        always ends."""
        self.hub.draining = True
        if self._http is not None:
            self._http.stop()
        if self.dispatcher is not None:
            self.dispatcher.shutdown(protocol.CLOSE_GOING_AWAY, "node shutting down")
        await asyncio.sleep(0.1)  # let close frames reach the clients
        if self._http is not None:
            try:  # a client that never answers the close is its own problem: not "stuck"
                await asyncio.wait_for(self._http.close_all_connections(),
                                       self.config.shutdown_grace)
            except asyncio.TimeoutError:
                log.warning("some HTTP connections did not close within the grace period")
        if self.dispatcher is not None:
            await self._stop_step("acks", self.dispatcher.flush_acks())
        for name, part in (("keepalive", self._keepalive), ("loop watch", self.loopwatch),
                           ("membership", self.membership), ("pruner", self.pruner),
                           ("relay", self.relay), ("bus", self._bus)):
            if part is not None:
                await self._stop_step(name, part.stop())
        await self._stop_step("worker", tasks.cancel(self._worker))
        if self._pool is not None:
            pool = self._pool
            if not await self._stop_step("pool", pool.close()):  # type: ignore[attr-defined]
                pool.terminate()  # type: ignore[attr-defined]

    async def _stop_step(self, name: str, step: Awaitable[object]) -> bool:
        """Await one step of stop() for at most ``shutdown_grace`` seconds; False if it
        failed (the database may be the reason we are stopping) or hung. A hung step is
        not cancelled (wait_for would wait for it to unwind, which may hang too): it is
        left running, and named in ``stuck`` and the log."""
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=self.config.shutdown_grace)
        if not done:
            self.stuck.append(name)
            log.warning("stop: %s still busy after %.1f s; left behind. Tasks:\n%s", name,
                        self.config.shutdown_grace, tasks.describe_all())
            return False
        err = None if task.cancelled() else task.exception()
        if err is not None:
            log.warning("stop: %s failed (%s: %s)", name, type(err).__name__, err)
        return err is None

    @property
    def bus_url(self) -> str:
        """Where LISTEN, the relay and its election connect (a direct connection)."""
        return self.config.bus_database_url or self.database_url

    @property
    def draining(self) -> bool:
        return self.hub.draining

    @property
    def bus(self) -> Bus:
        assert self._bus is not None
        return self._bus
