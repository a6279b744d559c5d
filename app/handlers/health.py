"""Operator endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Callable

from app.handlers.base import JsonHandler
from app.metrics import Metrics
from app.store import Store


class HealthzHandler(JsonHandler):
    """``GET /healthz``: 200 while the process serves requests."""

    def initialize(self, node_name: str) -> None:
        self.node_name = node_name

    def get(self) -> None:
        self.write_json({"status": "ok", "node": self.node_name})


class ReadyzHandler(JsonHandler):
    """``GET /readyz``: 200 only when the database answers, the LISTEN connection is up
    and the node is not draining; 503 with the failing checks otherwise."""

    def initialize(
        self, store: Store, bus_connected: Callable[[], bool], draining: Callable[[], bool],
        queue_usage: Callable[[], float], queue_max: float,
    ) -> None:
        self.store, self.bus_connected, self.draining = store, bus_connected, draining
        self.queue_usage, self.queue_max = queue_usage, queue_max

    async def get(self) -> None:
        checks: dict[str, object] = {
            "database": True, "listen": self.bus_connected(), "draining": self.draining(),
            "notify_queue_usage": self.queue_usage(),
        }
        try:
            await self.store.ping()
        except Exception:  # any failure to answer means "not ready", whatever its kind
            checks["database"] = False
        ready = (checks["database"] and checks["listen"] and not checks["draining"]
                 and self.queue_usage() <= self.queue_max)
        self.write_json({"status": "ready" if ready else "unavailable", **checks},
                        status=200 if ready else 503)


class MetricsHandler(JsonHandler):
    """``GET /metrics``: Prometheus text exposition format."""

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.metrics.render())
