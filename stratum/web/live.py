"""Live numbers of a deployment, read where they are made: each replica's ``/metrics``
(with the replica's deployment secret, as the supervisor's own calls carry it) and each
live gateway's ``/admin/routes`` (which replicas it ejected).

A deployment is sampled when a page asks, at most once every ``MIN_INTERVAL_S``; rates are
the change of the counters between two samples, so nothing runs while nobody looks, and
the first look has no rate yet. Every call is bounded (``TIMEOUT_S`` each, ``BUDGET_S`` in
all, ``MAX_BYTES`` read, ``MAX_REPLICAS`` asked) and one that fails is a gap, not an
error. The last ``KEEP`` samples per deployment feed the charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from stratum.control.state import DeploymentState
from stratum.control.supervisor import Supervisor
from stratum.gateway.call import route_label
from stratum.monitor import catalog
from stratum.security.tokens import REPLICA_SECRET_HEADER

MIN_INTERVAL_S = 1.0
TIMEOUT_S = 1.0
BUDGET_S = 2.5
MAX_BYTES = 1 << 20
MAX_REPLICAS = 64
KEEP = 600  # 20 minutes at the pages' 2 s poll

# The replica's samples this reads, named where every process takes them from; a unit test
# renders a real ReplicaMetrics and checks that each is found.
REQUESTS = catalog.REPLICA_REQUESTS.name
LATENCY = catalog.REPLICA_DURATION.series("bucket")
BATCH_SUM = catalog.REPLICA_BATCH.series("sum")
BATCH_COUNT = catalog.REPLICA_BATCH.series("count")
INFLIGHT = catalog.REPLICA_INFLIGHT.name
INFERENCE = frozenset(("predict", "infer"))


@dataclass
class Counters:
    """One replica's counters at one moment (inference routes unless named otherwise)."""

    requests: float = 0.0
    errors: float = 0.0  # answered 5xx
    feedback: float = 0.0  # feedback posts, any status
    latency: dict[float, float] = field(default_factory=dict)  # le → cumulative count
    batches: float = 0.0
    rows: float = 0.0
    inflight: float = 0.0

    def minus(self, before: Counters) -> Counters:
        """The change since ``before``; a counter that went down means the process
        restarted, and then all it counted is new."""
        def d(now: float, then: float) -> float:
            return now - then if now >= then else now
        if self.requests < before.requests or self.batches < before.batches:
            return self
        return Counters(d(self.requests, before.requests), d(self.errors, before.errors),
                        d(self.feedback, before.feedback),
                        {le: d(c, before.latency.get(le, 0.0)) for le, c in self.latency.items()},
                        d(self.batches, before.batches), d(self.rows, before.rows),
                        self.inflight)


def parse(text: str) -> Counters:
    """The counters of one ``/metrics`` exposition."""
    c = Counters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            route = route_label(s.labels.get("route", ""))  # replicas label by template
            status = s.labels.get("code", "")
            if s.name == REQUESTS:
                if route in INFERENCE:
                    c.requests += s.value
                    c.errors += s.value if status.startswith("5") else 0.0
                elif route == "feedback":
                    c.feedback += s.value
            elif s.name == LATENCY and route in INFERENCE:
                le = float(s.labels.get("le", "+Inf"))
                c.latency[le] = c.latency.get(le, 0.0) + s.value
            elif s.name == BATCH_SUM:
                c.rows += s.value
            elif s.name == BATCH_COUNT:
                c.batches += s.value
            elif s.name == INFLIGHT:
                c.inflight += s.value
    return c


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """``histogram_quantile`` of Prometheus over cumulative ``{le: count}``: linear within
    the bucket the rank falls in; None without observations."""
    edges = sorted(buckets)
    total = buckets.get(math.inf, buckets[edges[-1]] if edges else 0.0)
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for le in edges:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


@dataclass
class Point:
    """One sample of a deployment: rates over the time since the previous one."""

    t: float  # epoch seconds
    rps: float | None = None
    error_rate: float | None = None  # share of inference requests answered 5xx
    p50: float | None = None  # seconds
    p99: float | None = None
    batch_mean: float | None = None  # rows per forward pass
    feedback_rps: float | None = None
    inflight: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Snapshot:
    point: Point
    replicas: dict[str, dict[str, Any]]  # replica id → scraped, ejected, rps, inflight
    gateways: int  # gateways that answered


async def _fetch(http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> bytes | None:
    try:
        async with http.stream("GET", url, headers=headers, timeout=TIMEOUT_S) as r:
            if r.status_code != 200:
                return None
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    return None
            return bytes(body)
    except httpx.HTTPError:
        return None


class Sampler:
    """Samples deployments of the supervisor on demand; see the module docstring."""

    def __init__(self, sup: Supervisor, clock: Callable[[], float] = time.time) -> None:
        self.sup = sup
        self.clock = clock
        self._series: dict[str, deque[Point]] = {}
        self._last: dict[str, tuple[Snapshot, dict[str, Counters]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def series(self, name: str) -> list[Point]:
        return list(self._series.get(name, ()))

    async def sample(self, name: str) -> Snapshot | None:
        """A fresh sample of ``name`` (or the last one, if under ``MIN_INTERVAL_S`` old);
        None when the supervisor runs no such deployment."""
        st = self.sup.states.get(name)
        if st is None:
            self._forget(name)
            return None
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            last = self._last.get(name)
            if last is not None and self.clock() - last[0].point.t < MIN_INTERVAL_S:
                return last[0]
            snap, raw = await self._measure(st, last)
            self._last[name] = (snap, raw)
            self._series.setdefault(name, deque(maxlen=KEEP)).append(snap.point)
            return snap

    def forget_missing(self, names: Iterable[str]) -> None:
        for gone in set(self._last) - set(names):
            self._forget(gone)

    def _forget(self, name: str) -> None:
        self._series.pop(name, None)
        self._last.pop(name, None)
        self._locks.pop(name, None)

    async def _measure(self, st: DeploymentState,
                       last: tuple[Snapshot, dict[str, Counters]] | None
                       ) -> tuple[Snapshot, dict[str, Counters]]:
        http = self.sup.remote.http
        replicas = [r for r in st.replicas.values() if r.state != "starting"][:MAX_REPLICAS]
        gateways = [g for g in st.gateways.values() if g.live]
        calls = [_fetch(http, r.url + "/metrics", {REPLICA_SECRET_HEADER: r.secret}
                        if r.secret else {}) for r in replicas]
        calls += [_fetch(http, g.admin_url + "/admin/routes",
                         {"x-stratum-admin-token": st.gateway_token}) for g in gateways]
        bodies: list[bytes | None] = [None] * len(calls)
        with contextlib.suppress(TimeoutError):
            bodies = await asyncio.wait_for(asyncio.gather(*calls), BUDGET_S)
        now = self.clock()
        raw: dict[str, Counters] = {}
        for r, body in zip(replicas, bodies, strict=False):
            if body is not None:
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    raw[r.id] = parse(body.decode())
        ejected = _ejected(bodies[len(replicas):])
        before = last[1] if last else {}
        dt = now - last[0].point.t if last else 0.0
        deltas = {rid: c.minus(before[rid]) for rid, c in raw.items() if rid in before}
        point = _point(now, dt, list(deltas.values()), sum(c.inflight for c in raw.values()))
        rows = {r.id: {"scraped": r.id in raw, "ejected": ejected.get(r.url),
                       "inflight": raw[r.id].inflight if r.id in raw else None,
                       "rps": deltas[r.id].requests / dt if r.id in deltas and dt > 0 else None}
                for r in replicas}
        answered = sum(1 for b in bodies[len(replicas):] if b is not None)
        return Snapshot(point, rows, answered), raw


def _ejected(bodies: Iterable[bytes | None]) -> dict[str, bool]:
    """Replica URL → ejected by some gateway that answered (False: taken by all)."""
    out: dict[str, bool] = {}
    for body in bodies:
        if body is None:
            continue
        try:
            shown = orjson.loads(body).get("replicas") or {}
        except (orjson.JSONDecodeError, AttributeError):
            continue
        for url, doc in shown.items():
            if isinstance(doc, dict):
                out[url] = out.get(url, False) or not doc.get("healthy", True)
    return out


def _point(now: float, dt: float, deltas: list[Counters], inflight: float) -> Point:
    if dt <= 0 or not deltas:
        return Point(now, inflight=inflight)
    requests = sum(c.requests for c in deltas)
    buckets: dict[float, float] = {}
    for c in deltas:
        for le, n in c.latency.items():
            buckets[le] = buckets.get(le, 0.0) + n
    batches = sum(c.batches for c in deltas)
    return Point(now, rps=requests / dt,
                 error_rate=sum(c.errors for c in deltas) / requests if requests else None,
                 p50=quantile(buckets, 0.5), p99=quantile(buckets, 0.99),
                 batch_mean=sum(c.rows for c in deltas) / batches if batches else None,
                 feedback_rps=sum(c.feedback for c in deltas) / dt, inflight=inflight)


__all__ = ["Counters", "Point", "Sampler", "Snapshot", "parse", "quantile"]
