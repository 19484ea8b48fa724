"""The gateway's Prometheus metrics, on a private registry served at ``/metrics``.

Label children are cached per (route, code) so an observation costs two attribute calls.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("stratum_gateway_requests_total",
                                "Requests answered by the gateway", ["route", "code"], registry=r)
        self.latency = Histogram("stratum_gateway_request_seconds", "End-to-end latency",
                                 ["route"], buckets=_BUCKETS, registry=r)
        self.retries = Counter("stratum_gateway_retries_total",
                               "Inferences sent again to another replica", registry=r)
        self.retry_refused = Counter("stratum_gateway_retry_budget_exhausted_total",
                                     "Retries refused by the retry budget", registry=r)
        self.upstream_errors = Counter("stratum_gateway_upstream_errors_total",
                                       "Failed attempts against a replica", ["kind"], registry=r)
        self.shadow = Counter("stratum_gateway_shadow_total", "Mirrored requests", ["outcome"],
                              registry=r)
        self.healthy = Gauge("stratum_gateway_healthy_replicas", "Replicas taking traffic",
                             registry=r)
        self.replicas = Gauge("stratum_gateway_replicas", "Replicas in the routing table",
                              registry=r)
        self.held = Gauge("stratum_gateway_held_requests", "Requests waiting for a replica "
                          "of a deployment scaled to zero", registry=r)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, code: int, seconds: float) -> None:
        pair = self._children.get((route, code))
        if pair is None:
            pair = self._children[(route, code)] = (
                self.requests.labels(route, str(code)), self.latency.labels(route))
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
