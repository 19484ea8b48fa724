"""Autoscaling: what a deployment asks for (``AutoscaleSpec``: bounds, a target, a
cooldown), how a deploy request changes it (``resolve_scaling``), and the decisions that
follow from the load its gateways observe (``Autoscale``).

Pure: no HTTP, no store, time from an injected clock. ``autoscaler`` samples the gateways
and writes the count decided into the wanted spec, as ``stratum scale`` does, so that
starting, routing and draining before a stop stay the reconcile loop's.

The signal is *demand*: the requests in flight at the deployment's replicas as its
gateways count them (the same counter least-outstanding balancing reads), plus the
requests a gateway holds while the deployment has no replica (scaled to zero). By Little's
law it grows with both the request rate and the latency, so it needs no per-model
calibration of what one replica can take, as a requests-per-second target would.

- **Up, fast**: the mean demand over ``control.autoscale_window_s`` asks for
  ``ceil(demand / target)`` replicas; more than wanted now scales up at once (to at most
  ``max_replicas``). The count comes from the total demand, not from the load per replica
  ready, so replicas still starting are never counted twice: asking again while they start
  asks for the same count, not for more.
- **Down, slowly**: only ``scale_down_cooldown_s`` after the last change (the
  autoscaler's or a deploy's) has settled (no replica starting or being replaced), and to
  a count the *peak* of those means over the cooldown keeps at most ``HEADROOM`` of the
  target: a deployment that just scaled up must not scale down on the next dip, and
  between the up and the down thresholds nothing moves (hysteresis).
- **Bounds**: never below ``min_replicas`` nor above ``max_replicas``; ``min_replicas 0``
  lets an idle deployment go to zero, and any demand (a held request) brings one back.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, model_validator

from stratum.config.settings import ControlSettings
from stratum.errors import ConfigError

# A scale-down keeps the recent peak at most this share of the target per replica.
HEADROOM = 0.8
_EPSILON = 1e-9  # demand exactly at the target asks for no extra replica


class AutoscaleSpec(BaseModel):
    """A deployment's autoscaling, as stored in its wanted spec."""

    min_replicas: int = Field(ge=0, le=64)
    max_replicas: int = Field(ge=1, le=64)
    # Requests in flight per replica the autoscaler aims at.
    target_inflight: float = Field(gt=0, le=10_000)
    scale_down_cooldown_s: float = Field(ge=0, le=86_400)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas "
                             f"{self.max_replicas}")
        return self

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


class Scaling(BaseModel):
    """What a deploy request says about autoscaling; None: it says nothing of that."""

    min_replicas: int | None = Field(None, ge=0, le=64)
    max_replicas: int | None = Field(None, ge=1, le=64)
    target_inflight: float | None = Field(None, gt=0, le=10_000)
    scale_down_cooldown_s: float | None = Field(None, ge=0, le=86_400)


def resolve_scaling(asked: Scaling | None, replicas: int | None, current_replicas: int | None,
                    current: AutoscaleSpec | None,
                    defaults: ControlSettings) -> tuple[int, AutoscaleSpec | None]:
    """``(replicas, autoscale)`` of the new spec. What the request leaves out is kept from
    the current spec; an explicit ``replicas`` alone fixes the count (autoscaling off, as
    ``stratum scale`` does); with bounds it is the count to start from."""
    said = asked.model_dump(exclude_none=True) if asked is not None else {}
    if not said:
        if current is None or replicas is not None:
            return replicas or current_replicas or 1, None
        return current.clamp(current_replicas or current.min_replicas), current
    if current is None and not {"min_replicas", "max_replicas"} <= said.keys():
        raise ConfigError("autoscaling needs both --min-replicas and --max-replicas",
                          hint="e.g. --min-replicas 1 --max-replicas 4; the target and the "
                               "cooldown have defaults (control.autoscale_target_inflight, "
                               "control.scale_down_cooldown_s)")
    base = current.model_dump() if current is not None else {
        "target_inflight": defaults.autoscale_target_inflight,
        "scale_down_cooldown_s": defaults.scale_down_cooldown_s}
    merged = base | said
    if merged["min_replicas"] > merged["max_replicas"]:
        raise ConfigError(f"--min-replicas {merged['min_replicas']} is above --max-replicas "
                          f"{merged['max_replicas']}")
    spec = AutoscaleSpec.model_validate(merged)
    if replicas is not None:
        if spec.clamp(replicas) != replicas:
            raise ConfigError(f"--replicas {replicas} is outside --min-replicas "
                              f"{spec.min_replicas} .. --max-replicas {spec.max_replicas}",
                              hint="with autoscaling, --replicas is only the count to start "
                                   "from; leave it out to start from the minimum")
        return replicas, spec
    start = current_replicas if current_replicas is not None else spec.min_replicas
    return spec.clamp(start), spec


@dataclass(frozen=True)
class Load:
    """One sample of a deployment's load, summed over its gateways."""

    inflight: float  # sent to its replicas, not answered yet (mean since the last sample)
    waiting: int  # held by a gateway because no replica is routed (scaled to zero)
    ready: int  # ready replicas of the wanted version
    # Replicas are starting, or ones of a version no longer wanted still run (a rolling
    # update): a scale-down waits until the deployment has settled.
    settling: bool = False

    @property
    def demand(self) -> float:
        return self.inflight + self.waiting


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str  # "load", "low load", "idle" or "bounds"
    signal: dict[str, Any]  # what it was decided on, for the event


@dataclass
class _Seen:
    since: float  # the first sample, or the last change: a scale-down waits a cooldown
    samples: deque[tuple[float, float]] = field(default_factory=deque)  # (time, mean)
    raw: deque[tuple[float, float]] = field(default_factory=deque)  # (time, demand)


class Autoscale:
    """The decisions, with the samples they are made on, per deployment."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def decide(self, name: str, policy: AutoscaleSpec, replicas: int,
               load: Load) -> Decision | None:
        """Record ``load`` and say whether ``name``, wanting ``replicas`` now, should
        want another count."""
        now = self.clock()
        seen = self._seen.setdefault(name, _Seen(since=now))
        seen.raw.append((now, load.demand))
        _trim(seen.raw, now - self.window_s)
        mean = sum(d for _, d in seen.raw) / len(seen.raw)
        seen.samples.append((now, mean))
        _trim(seen.samples, now - policy.scale_down_cooldown_s - self.window_s)
        target = policy.target_inflight
        signal = {"inflight": round(load.inflight, 3), "waiting": load.waiting,
                  "ready": load.ready,
                  "mean_demand": round(mean, 3), "window_s": self.window_s,
                  "per_ready_replica": round(mean / max(load.ready, 1), 3),
                  "target_inflight": target}
        if policy.clamp(replicas) != replicas:
            return Decision(policy.clamp(replicas), "bounds", signal)
        up = policy.clamp(_replicas_for(mean, target))
        if up > replicas:
            return Decision(up, "load", signal)
        if load.settling:  # the cooldown counts from when the new replicas are ready
            seen.since = now
            return None
        if now - seen.since < policy.scale_down_cooldown_s:
            return None
        peak = _peak((m for t, m in seen.samples if t >= now - policy.scale_down_cooldown_s),
                     mean)
        down = policy.clamp(_replicas_for(peak, target * HEADROOM))
        if down < replicas:
            return Decision(down, "idle" if peak == 0 else "low load",
                            signal | {"peak_demand": round(peak, 3),
                                      "cooldown_s": policy.scale_down_cooldown_s})
        return None

    def applied(self, name: str) -> None:
        """A decided count was written, or the wanted state changed otherwise (a deploy):
        the cooldown starts again."""
        if name in self._seen:
            self._seen[name].since = self.clock()

    def forget(self, name: str) -> None:
        """``name`` is gone or no longer autoscaled."""
        self._seen.pop(name, None)


def _replicas_for(demand: float, per_replica: float) -> int:
    return max(0, math.ceil(demand / per_replica - _EPSILON))


def _peak(means: Iterable[float], latest: float) -> float:
    return max(means, default=latest)


def _trim(samples: deque[Any], before: float) -> None:
    """Drop samples older than ``before``, keeping the latest whatever its age."""
    while len(samples) > 1 and samples[0][0] < before:
        samples.popleft()
