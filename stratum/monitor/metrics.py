"""Registries and the small helpers every process uses around its metrics.

Each process keeps its metrics on a registry of its own (never the global default, so tests
that build several apps in one process do not collide), builds them from the definitions
in ``monitor.catalog`` and serves ``render(registry)`` on ``/metrics``::

    registry = new_registry()
    requests = catalog.REPLICA_REQUESTS.counter(registry)
    body, content_type = render(registry)

``DriftGauges`` are the learner's drift numbers, set by ``DriftMonitor``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
    make_asgi_app,
)

from stratum.monitor import catalog

CONTENT_TYPE = CONTENT_TYPE_LATEST


def new_registry() -> CollectorRegistry:
    """A fresh registry (not the global default, so tests and processes never collide)."""
    return CollectorRegistry(auto_describe=True)


@dataclass
class DriftGauges:
    """What ``DriftMonitor`` reports: PSI and KS per feature, the share drifted, and the
    accuracy of served predictions over the last feedback window."""

    psi: Gauge
    ks: Gauge
    drifted: Gauge
    accuracy: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DriftGauges:
        return cls(catalog.LEARNER_PSI.gauge(registry), catalog.LEARNER_KS.gauge(registry),
                   catalog.LEARNER_DRIFTED.gauge(registry),
                   catalog.LEARNER_ACCURACY.gauge(registry))


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample (e.g. ``stratum_replica_requests_total``); 0.0 if absent."""
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
