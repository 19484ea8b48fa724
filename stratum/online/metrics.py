"""The learner's Prometheus metrics (names in ``monitor.catalog``).

Drift gauges and the alert counter are set as things happen (``DriftMonitor``,
``AlertManager``); everything else is read off the learner when the page is scraped
(``watch``): the counts in ``learner.stats``, its challengers, its champion, and the
queue's backlog — so the learning loop itself carries no metric code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from stratum.monitor import catalog as c
from stratum.monitor.metrics import DriftGauges, new_registry

if TYPE_CHECKING:
    from stratum.online.learner import Learner


class LearnerMetrics:
    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = new_registry()
        self.drift = DriftGauges.create(self.registry)
        self.alerts = c.LEARNER_ALERTS.counter(self.registry)
        for rule in ("drift.input", "drift.accuracy"):  # zero, not absent, until one fires
            self.alerts.labels(rule)

    def watch(self, learner: Learner, backlog: Callable[[], int]) -> None:
        """Report ``learner``'s counts, challengers and champion, and ``backlog()`` (the
        feedback messages not yet acked), on every scrape."""
        self.registry.register(_Collector(self.model, learner, backlog))


class _Collector:
    def __init__(self, model: str, learner: Learner, backlog: Callable[[], int]) -> None:
        self.model, self.learner, self.backlog = model, learner, backlog

    def describe(self) -> list[Metric]:
        return []  # nothing to check up front; collect() reads the live learner

    def collect(self) -> Iterator[Metric]:
        model, s = [self.model], self.learner.stats
        lag = GaugeMetricFamily(c.LEARNER_LAG.name, c.LEARNER_LAG.help, labels=["model"])
        lag.add_metric(model, self.backlog())
        yield lag
        for d, value in ((c.LEARNER_CONSUMED, s.received), (c.LEARNER_APPLIED, s.applied)):
            fam = CounterMetricFamily(d.name, d.help, labels=["model"])
            fam.add_metric(model, value)
            yield fam
        updates = list(s.updates)
        promoted = sum(u.decision.promote for u in updates)
        fam = CounterMetricFamily(c.LEARNER_CHALLENGERS.name, c.LEARNER_CHALLENGERS.help,
                                  labels=["model", "decision"])
        fam.add_metric([self.model, "promoted"], promoted)
        fam.add_metric([self.model, "rejected"], len(updates) - promoted)
        yield fam
        fam = CounterMetricFamily(c.LEARNER_PROMOTIONS.name, c.LEARNER_PROMOTIONS.help,
                                  labels=["model"])
        fam.add_metric(model, promoted)
        yield fam
        yield _histogram(model, [u.seconds for u in updates])
        champion = self.learner.champion
        for d, number in ((c.LEARNER_CHAMPION, float(champion.version)),
                          (c.LEARNER_HOLDOUT, champion.holdout_score)):
            g = GaugeMetricFamily(d.name, d.help, labels=["model"])
            g.add_metric(model, number)
            yield g


def _histogram(model: list[str], seconds: list[float]) -> HistogramMetricFamily:
    d = c.LEARNER_UPDATE
    buckets = [(str(b), sum(1 for x in seconds if x <= b)) for b in d.buckets]
    fam = HistogramMetricFamily(d.name, d.help, labels=["model"])
    fam.add_metric(model, [*buckets, ("+Inf", len(seconds))], sum(seconds))
    return fam
