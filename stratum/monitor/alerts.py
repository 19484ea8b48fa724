"""Alerts, recorded as ``alert.<rule>`` events in the store.

An ``Alert`` comes from a rule (``monitor.rules``, evaluated by the control plane) or
ready-made from ``DriftMonitor`` (the learner). ``AlertManager.fire`` records each as an
event (``alert.<rule>``, subject = model or deployment) at most once per cooldown — also
across processes: an event of the same kind and subject already in the store within the
cooldown counts — so a condition that stays true does not flood ``stratum status``.

>>> a = Alert("learner.lag", "mnist", 5000, 1000, "feedback waiting")
>>> [x.kind for x in AlertManager(None).fire([a, a])]
['alert.learner.lag']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from stratum.store.models import utcnow

if TYPE_CHECKING:  # only the type: recording calls meta.add_event
    from stratum.store.metadata import MetadataStore

log = logging.getLogger(__name__)

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


class AlertManager:
    """Records alerts as events, each (rule, subject) once per cooldown."""

    def __init__(
        self, meta: MetadataStore | None, *, cooldown_s: float = 300.0,
        counter: Counter | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.meta = meta
        self.cooldown_s = cooldown_s
        self.counter = counter  # alerts recorded, by rule
        self._clock = clock
        self._last_fired: dict[tuple[str, str], float] = {}

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
                if self._recorded_lately(alert):
                    continue
                self.meta.add_event(alert.kind, alert.subject, alert.to_payload())
            if self.counter is not None:
                self.counter.labels(alert.rule).inc()
            log.warning("alert %s on %s: %s", alert.rule, alert.subject, alert.message,
                        extra={"alert": alert.rule, "subject": alert.subject})
            fired.append(alert)
        return fired

    def _recorded_lately(self, alert: Alert) -> bool:
        """Another process (the learner, a previous leader) recorded it within the
        cooldown."""
        assert self.meta is not None
        last = self.meta.events(alert.subject, alert.kind, limit=1)
        if not last:
            return False
        ts = last[0].ts if last[0].ts.tzinfo else last[0].ts.replace(tzinfo=utcnow().tzinfo)
        return utcnow() - ts < timedelta(seconds=self.cooldown_s)
