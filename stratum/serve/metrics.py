"""Prometheus metrics of one replica (names in ``monitor.catalog``), in a registry of its
own (one per app, so tests that build several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stratum.monitor import catalog as c
from stratum.monitor.metrics import new_registry


class ReplicaMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.registry = r = new_registry()
        self._requests = c.REPLICA_REQUESTS.counter(r)
        self._latency = c.REPLICA_DURATION.histogram(r)
        self.batch_size = c.REPLICA_BATCH.histogram(r)
        self.batch_wait = c.REPLICA_BATCH_WAIT.histogram(r)
        self.forward = c.REPLICA_FORWARD.histogram(r)
        self.queue_depth = c.REPLICA_QUEUE.gauge(r)
        self.inflight = c.REPLICA_INFLIGHT.gauge(r)
        self._version = c.REPLICA_VERSION.gauge(r).labels(model)
        self.swaps = c.REPLICA_SWAPS.counter(r)
        self.feedback = c.REPLICA_FEEDBACK.counter(r)
        for outcome in ("accepted", "duplicate"):  # zero, not absent, before the first one
            self.feedback.labels(outcome)
        # labels() costs a lock and a dict lookup; the hot path reuses the children.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        pair = self._children.get(key)
        if pair is None:
            s = str(status)
            pair = self._children[key] = (self._requests.labels(route, s),
                                          self._latency.labels(route, s))
        pair[0].inc()
        pair[1].observe(seconds)

    def on_batch(self, rows: int, waited_s: float, forward_s: float) -> None:
        """One forward pass: its rows, how long its oldest request waited, its time."""
        self.batch_size.observe(rows)
        self.batch_wait.observe(waited_s)
        self.forward.observe(forward_s)

    def set_version(self, version: int) -> None:
        self._version.set(version)

    def render(self, queue_depth: int, inflight: int) -> bytes:
        self.queue_depth.set(queue_depth)
        self.inflight.set(inflight)
        return generate_latest(self.registry)
