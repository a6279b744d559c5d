"""Prometheus metrics for one node, on a registry of its own (two nodes may share a
process in tests, so nothing is registered globally)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the exposition size and say nothing useful here.
disable_created_metrics()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "herald_connections", "Authenticated WebSocket connections on this node", registry=r
        )
        self.delivered = Counter(
            "herald_notifications_delivered",
            "Notification frames sent live (bus-driven fan-out)",
            registry=r,
        )
        self.replayed = Counter(
            "herald_notifications_replayed",
            "Notification frames sent from the table on connect or after bus loss",
            registry=r,
        )
        self.published = Counter(
            "herald_notifications_published", "Notifications inserted via the HTTP API", registry=r
        )
        self.bus_reconnects = Counter(
            "herald_bus_reconnects", "Times the LISTEN connection was re-established", registry=r
        )
        self.bus_connected = Gauge(
            "herald_bus_connected", "1 while the LISTEN connection is up", registry=r
        )
        self.bus_events = Counter(
            "herald_bus_events", "NOTIFY payloads received", ["kind"], registry=r
        )
        self.shards = Gauge(
            "herald_bus_shards", "User shards whose channels this node listens to", registry=r
        )
        self.routing = Counter(
            "herald_ws_routing", "Sessions by routing key: 'hit' (the user's shard), 'miss' "
            "(another shard: the load balancer's key was wrong) or 'none'", ["result"],
            registry=r,
        )
        self.relay_leader = Gauge(
            "herald_relay_leader", "1 while this node is the elected relay", registry=r
        )
        self.relay_batched = Gauge(
            "herald_relay_batched",
            "1 while this node's relay announces new rows (writers do not NOTIFY)",
            registry=r,
        )
        self.notify_queue = Gauge(
            "herald_notify_queue_usage",
            "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use",
            registry=r,
        )
        self.pruned = Counter(
            "herald_pruned",
            "Rows deleted by this node's retention passes (old or expired)",
            registry=r,
        )
        self.shed = Counter(
            "herald_rebalanced",
            "Sockets this node closed (1001) because it held more than its share",
            registry=r,
        )
        self.refused = Counter(
            "herald_refused",
            "Frames, connections and requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.latency = Histogram(
            "herald_delivery_latency_seconds",
            "Commit-to-socket latency of live deliveries (now - created_at)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        self.loop_lag = Histogram(
            "herald_event_loop_lag_seconds",
            "How late the event loop ran a timer due now: the time every other task on "
            "this node waited behind work that did not yield (sampled every 50 ms)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
