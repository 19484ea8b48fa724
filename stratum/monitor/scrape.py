"""Scraped samples over time, for the built-in evaluator: what Prometheus would store, kept
in memory for as long as the longest rule window.

A ``Target`` is one process's ``/metrics`` URL and the labels its samples get (the same
labels the control plane's service discovery gives Prometheus: ``component``,
``deployment``, ``replica``…). ``History.add(t, samples)`` records one scrape round;
``latest`` and ``window`` answer the rule expressions (``monitor.promql``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from stratum.monitor.promql import Labels


@dataclass(frozen=True)
class Target:
    """A process to scrape: ``url`` of its metrics page and the labels of its samples."""

    url: str
    labels: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[-1].split("/", 1)[0]


Round = dict[str, dict[Labels, float]]  # series name → labels → value


def parse(text: str, extra: Mapping[str, str], names: set[str] | None = None) -> Round:
    """One exposition page as series; ``extra`` (the target's labels) are added to every
    sample, and only series in ``names`` are kept when it is given."""
    out: Round = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if names is not None and s.name not in names:
                continue
            labels = {**s.labels, **extra}
            out.setdefault(s.name, {})[tuple(sorted(labels.items()))] = float(s.value)
    return out


def merge(rounds: Iterable[Round]) -> Round:
    out: Round = {}
    for r in rounds:
        for name, series in r.items():
            out.setdefault(name, {}).update(series)
    return out


class History:
    """Scrape rounds of the last ``keep_s`` seconds (time from the caller's clock)."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self.rounds: deque[tuple[float, Round]] = deque()

    def add(self, t: float, samples: Round) -> None:
        self.rounds.append((t, samples))
        while self.rounds and self.rounds[0][0] < t - self.keep_s:
            self.rounds.popleft()

    def latest(self, name: str) -> Mapping[Labels, float]:
        return self.rounds[-1][1].get(name, {}) if self.rounds else {}

    def window(self, name: str, seconds: float) -> Mapping[Labels, list[tuple[float, float]]]:
        """Each series present in the last round, with its samples of the last
        ``seconds`` (PromQL's range selector)."""
        if not self.rounds:
            return {}
        now = self.rounds[-1][0]
        out: dict[Labels, list[tuple[float, float]]] = {
            k: [] for k in self.rounds[-1][1].get(name, {})}
        for t, r in self.rounds:
            if t < now - seconds:
                continue
            for k, v in r.get(name, {}).items():
                if k in out:
                    out[k].append((t, v))
        return out
