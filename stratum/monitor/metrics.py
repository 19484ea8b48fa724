"""Prometheus metrics shared by every Stratum process: one set of names, one set of buckets.

Each process builds one ``Metrics`` (own registry) and serves it on ``/metrics``::

    metrics = Metrics.create("replica")
    app.add_route("/metrics", metrics_endpoint(metrics.registry))   # Starlette/FastAPI
    with metrics.time_request(model="mnist", route="predict") as status:
        ...; status.code = 200

Names (all prefixed ``stratum_``) are the ones the Grafana dashboard
(``docs/grafana-dashboard.json``) queries; ``METRIC_NAMES`` lists them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_asgi_app,
)

# Seconds: sub-millisecond batching up to multi-second timeouts.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

METRIC_NAMES = (
    "stratum_requests_total",
    "stratum_request_latency_seconds",
    "stratum_inflight_requests",
    "stratum_batch_size",
    "stratum_batch_wait_seconds",
    "stratum_errors_total",
    "stratum_model_version",
    "stratum_queue_depth",
    "stratum_queue_pending",
    "stratum_feedback_total",
    "stratum_drift_psi",
    "stratum_drift_ks_statistic",
    "stratum_drift_features_drifted",
    "stratum_online_accuracy",
    "stratum_alerts_total",
)


def new_registry() -> CollectorRegistry:
    """A fresh registry (not the global default, so tests and processes never collide)."""
    return CollectorRegistry(auto_describe=True)


@dataclass
class RequestStatus:
    """Set ``code`` inside ``time_request``; it labels the request counter."""

    code: int | str = 200


@dataclass
class Metrics:
    """The standard metrics of one process, on one registry."""

    component: str
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    inflight: Gauge
    batch_size: Histogram
    batch_wait: Histogram
    errors: Counter
    model_version: Gauge
    queue_depth: Gauge
    queue_pending: Gauge
    feedback: Counter
    drift_psi: Gauge
    drift_ks: Gauge
    drift_drifted: Gauge
    online_accuracy: Gauge
    alerts: Counter

    @classmethod
    def create(cls, component: str, registry: CollectorRegistry | None = None) -> Metrics:
        """Register the standard metrics for ``component`` (replica, gateway, learner…)."""
        r = registry if registry is not None else new_registry()
        req = ("component", "model", "route")
        return cls(
            component=component, registry=r,
            requests=Counter("stratum_requests", "Requests handled.", [*req, "code"],
                             registry=r),
            latency=Histogram("stratum_request_latency_seconds", "Request latency.", req,
                              buckets=LATENCY_BUCKETS, registry=r),
            inflight=Gauge("stratum_inflight_requests", "Requests in flight.",
                           ["component", "model"], registry=r),
            batch_size=Histogram("stratum_batch_size", "Rows per executed batch.", ["model"],
                                 buckets=BATCH_BUCKETS, registry=r),
            batch_wait=Histogram("stratum_batch_wait_seconds", "Time a row waited for its batch.",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r),
            errors=Counter("stratum_errors", "Errors by kind.", ["component", "kind"],
                           registry=r),
            model_version=Gauge("stratum_model_version", "Model version being served.",
                                ["component", "model"], registry=r),
            queue_depth=Gauge("stratum_queue_depth", "Messages not yet acked.", ["stream"],
                              registry=r),
            queue_pending=Gauge("stratum_queue_pending", "Messages delivered, not acked.",
                                ["stream"], registry=r),
            feedback=Counter("stratum_feedback", "Feedback received, by outcome.",
                             ["model", "outcome"], registry=r),
            drift_psi=Gauge("stratum_drift_psi", "PSI of the last window against training.",
                            ["model", "feature"], registry=r),
            drift_ks=Gauge("stratum_drift_ks_statistic", "KS statistic of the last window.",
                           ["model", "feature"], registry=r),
            drift_drifted=Gauge("stratum_drift_features_drifted",
                                "Share of features drifted in the last window.", ["model"],
                                registry=r),
            online_accuracy=Gauge("stratum_online_accuracy",
                                  "Accuracy on a window (recent feedback or holdout).",
                                  ["model", "window"], registry=r),
            alerts=Counter("stratum_alerts", "Alerts fired, by rule.", ["rule"], registry=r),
        )

    @contextmanager
    def time_request(self, model: str, route: str) -> Iterator[RequestStatus]:
        """Count, time and track in-flight one request; an exception counts as code 500."""
        status = RequestStatus()
        inflight = self.inflight.labels(self.component, model)
        inflight.inc()
        t0 = time.perf_counter()
        try:
            yield status
        except BaseException:
            status.code = 500
            raise
        finally:
            inflight.dec()
            self.latency.labels(self.component, model, route).observe(time.perf_counter() - t0)
            self.requests.labels(self.component, model, route, str(status.code)).inc()

    def observe_queue(self, stream: str, size: int, pending: int) -> None:
        self.queue_depth.labels(stream).set(size)
        self.queue_pending.labels(stream).set(pending)


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample (e.g. ``stratum_requests_total``); 0.0 if absent."""
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


def sample_sum(registry: CollectorRegistry, name: str, **match: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``match``."""
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in match.items()):
                total += s.value
    return total


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """``(body, content_type)`` of the text exposition, for any web framework."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def metrics_endpoint(registry: CollectorRegistry) -> ASGIApp:
    """An ASGI app serving ``registry`` (mount it at ``/metrics``)."""
    return make_asgi_app(registry=registry)
