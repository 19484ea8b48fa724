"""The gateway's Prometheus metrics (names in ``monitor.catalog``), on a private registry
served at ``/metrics``.

Requests are labelled with the model they addressed (several deployments can share a
gateway), its route and status. Only a model of the routing table becomes a label value
(a name nobody deployed is ``unknown``; the static wildcard's ``*``; the gateway's own
routes none), so a client cannot grow the series. The labels of a path and the label
children are cached, so an observation costs two dictionary lookups and two calls.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import Counter, Histogram, generate_latest

from stratum.gateway.call import model_of, route_label
from stratum.gateway.traffic import WILDCARD
from stratum.monitor import catalog as c
from stratum.monitor.metrics import new_registry

_MAX_PATHS = 4096  # distinct paths remembered; past it the cache starts over


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = new_registry()
        self.requests = c.GATEWAY_REQUESTS.counter(r)
        self.latency = c.GATEWAY_DURATION.histogram(r)
        self.retries = c.GATEWAY_RETRIES.counter(r)
        self.retry_refused = c.GATEWAY_RETRY_REFUSED.counter(r)
        self.upstream_errors = c.GATEWAY_UPSTREAM_ERRORS.counter(r)
        self.shadow = c.GATEWAY_SHADOW.counter(r)
        self.healthy = c.GATEWAY_HEALTHY.gauge(r)
        self.replicas = c.GATEWAY_REPLICAS.gauge(r)
        self.held = c.GATEWAY_HELD.gauge(r)
        self.ratelimit = c.GATEWAY_RATELIMIT_FALLBACK.counter(r)
        self._fallbacks = {why: self.ratelimit.labels(why) for why in ("table_full", "redis")}
        self._paths: dict[str, tuple[object, str, str]] = {}
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, path: str, pools: Mapping[str, object], code: int, seconds: float) -> None:
        """One answered request for ``path``; ``pools``: the routing table's."""
        seen = self._paths.get(path)
        if seen is None or seen[0] is not pools:
            seen = self._paths[path] = (pools, route_label(path), _model(path, pools))
            if len(self._paths) > _MAX_PATHS:
                self._paths = {path: seen}
        key = (seen[2], seen[1], code)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.requests.labels(seen[2], seen[1], str(code)),
                self.latency.labels(seen[2], seen[1]))
        pair[0].inc()
        pair[1].observe(seconds)

    def ratelimit_fallback(self, reason: str) -> None:
        """A rate-limit check that its shared buckets could not decide (``ratelimit``)."""
        self._fallbacks[reason].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _model(path: str, pools: Mapping[str, object]) -> str:
    model = model_of(path)
    if model is None:
        return ""
    if model in pools:
        return model
    return WILDCARD if WILDCARD in pools else "unknown"
