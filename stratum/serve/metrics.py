"""Prometheus metrics of one replica, in a registry of its own (one per app, so tests
that build several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ReplicaMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str) -> None:
        self.registry = r = CollectorRegistry()
        self._requests = Counter("stratum_replica_requests", "HTTP requests by route and status",
                                 ["route", "status"], registry=r)
        self._latency = Histogram("stratum_replica_request_seconds",
                                  "Time from request to response, by route and status",
                                  ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("stratum_replica_batch_size", "Rows per forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("stratum_replica_queue_depth",
                                 "Rows waiting for the next forward pass", registry=r)
        self.inflight = Gauge("stratum_replica_inflight", "Requests being served", registry=r)
        self._version = Gauge("stratum_replica_model_version", "Model version being served",
                              ["model"], registry=r).labels(model)
        self.swaps = Counter("stratum_replica_swaps", "Hot swaps by outcome", ["outcome"],
                             registry=r)
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

    def set_version(self, version: int) -> None:
        self._version.set(version)

    def render(self, queue_depth: int, inflight: int) -> bytes:
        self.queue_depth.set(queue_depth)
        self.inflight.set(inflight)
        return generate_latest(self.registry)
