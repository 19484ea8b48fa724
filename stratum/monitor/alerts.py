"""Alert rules over metrics and drift, recorded as ``alert.*`` events in the store.

A rule compares one number read from a metrics registry with a threshold; drift alerts
come ready-made from ``DriftMonitor``. ``AlertManager.fire`` records each alert as an
event (``alert.<rule>``, subject = model or component) at most once per cooldown, so a
condition that stays true does not flood ``stratum status``.

>>> from stratum.monitor.metrics import Metrics
>>> m = Metrics.create("gateway")
>>> m.queue_depth.labels("feedback").set(50_000)
>>> rule = ThresholdRule("queue.backlog", "stratum_queue_depth", 10_000)
>>> [a.rule for a in AlertManager(None, [rule]).evaluate(m.registry)]
['queue.backlog']
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry

from stratum.monitor.metrics import Metrics, sample_sum

if TYPE_CHECKING:  # only the type: recording calls meta.add_event
    from stratum.store.metadata import MetadataStore

log = logging.getLogger(__name__)

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


@dataclass(frozen=True)
class Alert:
    """One firing condition. ``kind`` is the event kind it is recorded under."""

    rule: str
    subject: str
    value: float
    threshold: float
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"alert.{self.rule}"

    def to_payload(self) -> dict[str, Any]:
        return {"rule": self.rule, "value": self.value, "threshold": self.threshold,
                "message": self.message, **self.details}


@dataclass
class ThresholdRule:
    """``value(metric) OP threshold`` fires. The value is the sum of the samples named
    ``metric`` whose labels include ``labels``; with ``per``, divided by the same sum of
    ``per`` (a ratio such as errors per request); with ``mode="delta"``, counted since
    the previous evaluation (a rate over the evaluation interval, for counters)."""

    name: str
    metric: str
    threshold: float
    op: Literal[">", ">=", "<", "<="] = ">"
    labels: dict[str, str] = field(default_factory=dict)
    per: str | None = None
    mode: Literal["value", "delta"] = "value"
    subject: str = "system"
    _last: tuple[float, float] | None = field(default=None, repr=False)

    def measure(self, registry: CollectorRegistry) -> float | None:
        num = sample_sum(registry, self.metric, **self.labels)
        den = sample_sum(registry, self.per, **self.labels) if self.per else 1.0
        if self.mode == "delta":
            last, self._last = self._last, (num, den)
            if last is None:
                return None  # the first evaluation only sets the baseline
            num, den = num - last[0], (den - last[1]) if self.per else 1.0
        if den == 0:
            return None
        return num / den

    def check(self, registry: CollectorRegistry) -> Alert | None:
        value = self.measure(registry)
        if value is None or not _OPS[self.op](value, self.threshold):
            return None
        return Alert(self.name, self.subject, value, self.threshold,
                     f"{self.metric} is {value:.4g}, {self.op} {self.threshold:g}",
                     {"metric": self.metric, "labels": self.labels})


def default_rules() -> list[ThresholdRule]:
    """Rules every deployment gets: error ratio, queue backlog, share of drifted features."""
    return [
        ThresholdRule("errors.ratio", "stratum_errors_total", 0.05,
                      per="stratum_requests_total", mode="delta"),
        ThresholdRule("queue.backlog", "stratum_queue_depth", 10_000),
        ThresholdRule("drift.features", "stratum_drift_features_drifted", 0.1, op=">="),
    ]


class AlertManager:
    """Evaluates rules and records alerts as events, each (rule, subject) once per cooldown."""

    def __init__(
        self, meta: MetadataStore | None, rules: Sequence[ThresholdRule] = (), *,
        cooldown_s: float = 300.0, metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meta = meta
        self.rules = list(rules)
        self.cooldown_s = cooldown_s
        self.metrics = metrics
        self._clock = clock
        self._last_fired: dict[tuple[str, str], float] = {}

    def evaluate(self, registry: CollectorRegistry) -> list[Alert]:
        """Check every rule against ``registry``; fire and return those past threshold."""
        return self.fire(a for a in (r.check(registry) for r in self.rules) if a is not None)

    def fire(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Record ``alerts`` not fired within the cooldown; returns the ones recorded."""
        fired = []
        now = self._clock()
        for alert in alerts:
            key = (alert.rule, alert.subject)
            last = self._last_fired.get(key)
            if last is not None and now - last < self.cooldown_s:
                continue
            self._last_fired[key] = now
            if self.meta is not None:
                self.meta.add_event(alert.kind, alert.subject, alert.to_payload())
            if self.metrics is not None:
                self.metrics.alerts.labels(alert.rule).inc()
            log.warning("alert %s on %s: %s", alert.rule, alert.subject, alert.message,
                        extra={"alert": alert.rule, "subject": alert.subject})
            fired.append(alert)
        return fired
