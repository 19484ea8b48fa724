"""The small part of PromQL the alert rules use, written once as Python objects that
render as PromQL (for Prometheus' rules file) and evaluate over scraped samples (for the
control plane's built-in evaluator), so both run the same rules.

Supported: selectors with ``=``, ``!=``, ``=~`` matchers; ``rate`` and ``increase``
over a window; ``sum by`` and ``max by``; ``histogram_quantile``; ``or`` with zeros
(``OrZero``); ``/`` and ``-`` between
vectors with identical label sets (PromQL's default one-to-one matching); a comparison
with a number. Evaluation follows PromQL's semantics where they matter for alerts (0/0 is
NaN and compares false, an empty vector is no alert, a regex matches the whole value,
a missing label equals ""); ``rate`` divides the change between the first and the last
sample of the window by the time between them (Prometheus also extrapolates to the window
edges, so its values differ slightly, never its sign).

>>> e = Agg("sum", Rate(sel("stratum_gateway_requests_total", code=Re("5..")), 300), ("model",))
>>> e.promql()
'sum by (model) (rate(stratum_gateway_requests_total{code=~"5.."}[5m]))'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

Labels = tuple[tuple[str, str], ...]  # sorted, without __name__
Vector = dict[Labels, float]


class Samples(Protocol):
    """Scraped samples over time (``monitor.scrape.History``)."""

    def latest(self, name: str) -> Mapping[Labels, float]: ...
    def window(self, name: str, seconds: float) -> Mapping[Labels, list[tuple[float, float]]]: ...


# -- matchers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ne:
    value: str
    op = "!="

    def ok(self, v: str) -> bool:
        return v != self.value


@dataclass(frozen=True)
class Re:
    value: str
    op = "=~"

    def ok(self, v: str) -> bool:
        return re.fullmatch(self.value, v) is not None


@dataclass(frozen=True)
class Eq:
    value: str
    op = "="

    def ok(self, v: str) -> bool:
        return v == self.value


Matcher = Eq | Ne | Re


def duration(seconds: float) -> str:
    """PromQL's duration: 300 → 5m, 90 → 90s, 3600 → 1h."""
    s = int(seconds)
    if s != seconds or s <= 0:
        raise ValueError(f"windows are whole seconds > 0, not {seconds}")
    for unit, size in (("h", 3600), ("m", 60)):
        if s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


# -- expressions ------------------------------------------------------------------------
class Expr(Protocol):
    def promql(self) -> str: ...
    def evaluate(self, samples: Samples) -> Vector: ...
    def names(self) -> set[str]: ...


@dataclass(frozen=True)
class Sel:
    name: str
    matchers: tuple[tuple[str, Matcher], ...] = ()

    def promql(self) -> str:
        if not self.matchers:
            return self.name
        inner = ",".join(f'{k}{m.op}"{m.value}"' for k, m in self.matchers)
        return f"{self.name}{{{inner}}}"

    def match(self, labels: Labels) -> bool:
        d = dict(labels)
        return all(m.ok(d.get(k, "")) for k, m in self.matchers)

    def evaluate(self, samples: Samples) -> Vector:
        return {k: v for k, v in samples.latest(self.name).items() if self.match(k)}

    def names(self) -> set[str]:
        return {self.name}


def sel(name: str, **matchers: str | Matcher) -> Sel:
    return Sel(name, tuple((k, Eq(v) if isinstance(v, str) else v)
                           for k, v in matchers.items()))


@dataclass(frozen=True)
class Rate:
    """Per-second rate of a counter over ``window_s``; ``increase=True`` gives the change
    over the window instead."""

    of: Sel
    window_s: float
    increase: bool = False

    def promql(self) -> str:
        fn = "increase" if self.increase else "rate"
        return f"{fn}({self.of.promql()}[{duration(self.window_s)}])"

    def evaluate(self, samples: Samples) -> Vector:
        out: Vector = {}
        for labels, points in samples.window(self.of.name, self.window_s).items():
            if len(points) < 2 or not self.of.match(labels):
                continue
            delta, prev = 0.0, points[0][1]
            for _, v in points[1:]:
                delta += v - prev if v >= prev else v  # a reset: the counter restarted at 0
                prev = v
            span = points[-1][0] - points[0][0]
            if span <= 0:
                continue
            rate = delta / span
            out[labels] = rate * self.window_s if self.increase else rate
        return out

    def names(self) -> set[str]:
        return {self.of.name}


@dataclass(frozen=True)
class Agg:
    op: str  # sum | max
    of: Expr
    by: tuple[str, ...]

    def promql(self) -> str:
        return f"{self.op} by ({', '.join(self.by)}) ({self.of.promql()})"

    def evaluate(self, samples: Samples) -> Vector:
        groups: dict[Labels, list[float]] = {}
        for labels, v in self.of.evaluate(samples).items():
            d = dict(labels)
            key = tuple(sorted((k, d[k]) for k in self.by if d.get(k, "") != ""))
            groups.setdefault(key, []).append(v)
        return {k: (sum(vs) if self.op == "sum" else max(vs)) for k, vs in groups.items()}

    def names(self) -> set[str]:
        return self.of.names()


@dataclass(frozen=True)
class Bin:
    op: str  # / | -
    left: Expr
    right: Expr

    def promql(self) -> str:
        return f"{self.left.promql()} {self.op} {self.right.promql()}"

    def evaluate(self, samples: Samples) -> Vector:
        right = self.right.evaluate(samples)
        out: Vector = {}
        for labels, a in self.left.evaluate(samples).items():
            if labels not in right:
                continue
            b = right[labels]
            if self.op == "-":
                out[labels] = a - b
            else:
                out[labels] = a / b if b else (math.nan if a == 0 else math.copysign(
                    math.inf, a))
        return out

    def names(self) -> set[str]:
        return self.left.names() | self.right.names()


@dataclass(frozen=True)
class OrZero:
    """``(of or like * 0)``: ``of``, and 0 for each series of ``like`` it lacks (a ratio of
    errors is then 0, not absent, while there were none)."""

    of: Expr
    like: Expr

    def promql(self) -> str:
        return f"({self.of.promql()} or {self.like.promql()} * 0)"

    def evaluate(self, samples: Samples) -> Vector:
        return {**{k: 0.0 for k in self.like.evaluate(samples)}, **self.of.evaluate(samples)}

    def names(self) -> set[str]:
        return self.of.names() | self.like.names()


@dataclass(frozen=True)
class Quantile:
    """``histogram_quantile(q, of)``: ``of`` gives bucket rates with an ``le`` label."""

    q: float
    of: Expr

    def promql(self) -> str:
        return f"histogram_quantile({self.q}, {self.of.promql()})"

    def evaluate(self, samples: Samples) -> Vector:
        groups: dict[Labels, list[tuple[float, float]]] = {}
        for labels, v in self.of.evaluate(samples).items():
            d = dict(labels)
            le = d.pop("le", None)
            if le is None:
                continue
            groups.setdefault(tuple(sorted(d.items())), []).append((float(le), v))
        return {k: _bucket_quantile(self.q, sorted(b)) for k, b in groups.items()}

    def names(self) -> set[str]:
        return self.of.names()


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' interpolation within the bucket the rank falls in (cumulative counts)."""
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        return math.nan
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == math.inf:
                return prev_le  # past the last finite bucket: its upper bound
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
       "<=": lambda a, b: a <= b}
