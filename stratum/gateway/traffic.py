"""The routing table: per model, one or two weighted version groups (canary) and an
optional shadow group that receives a fire-and-forget copy of the traffic.

The table is replaced whole and atomically (one attribute assignment) when the supervisor
PUTs a deployment's part of it (``/admin/routes/NAME``: several deployments can share a
gateway, ``merge``); replicas are kept by URL across tables, so a route update keeps
their warm connections and health state. The table also carries each replica's deployment
secret (sent to it on every request); what the gateway shows of the table never does.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import orjson
from pydantic import BaseModel, Field, StringConstraints, field_validator

from stratum.gateway.balancer import POLICIES, Balancer, make_balancer
from stratum.gateway.upstream import Upstream
from stratum.security.tokens import REPLICA_SECRET_PATTERN

WILDCARD = "*"  # a pool that serves any model name (static `--replica` mode)
Secret = Annotated[str, StringConstraints(pattern=REPLICA_SECRET_PATTERN)]


def _known_policy(v: str | None) -> str | None:
    if v is not None and v not in POLICIES:
        raise ValueError(f"unknown policy {v!r}; use one of {', '.join(POLICIES)}")
    return v


class GroupSpec(BaseModel):
    version: int | None = None
    weight: float = Field(100.0, ge=0)
    replicas: list[str] = Field(default_factory=list)


class ShadowSpec(BaseModel):
    version: int | None = None
    percent: float = Field(100.0, ge=0, le=100)
    replicas: list[str] = Field(min_length=1)


class PoolLimits(BaseModel):
    """What a deployment asks of the gateways beyond theirs: a key (``require_auth``; None
    keeps the gateway's setting) and a request rate per key for this deployment alone."""

    require_auth: bool | None = None
    rate_limit_per_s: float | None = Field(None, gt=0)
    rate_limit_burst: int | None = Field(None, ge=1)


class PoolSpec(BaseModel):
    groups: list[GroupSpec] = Field(min_length=1, max_length=2)
    shadow: ShadowSpec | None = None
    # Per deployment, since several share a gateway: None takes the table's (or the
    # gateway's) policy.
    policy: str | None = None
    limits: PoolLimits | None = None

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return _known_policy(v)


class RoutesSpec(BaseModel):
    """What the supervisor PUTs to ``/admin/routes`` (and what ``--replica`` builds)."""

    deployments: dict[str, PoolSpec] = Field(default_factory=dict)
    policy: str | None = None  # None: the gateway's configured policy
    # Replica URL → the secret of the deployment generation that started it.
    secrets: dict[str, Secret] = Field(default_factory=dict)

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        return _known_policy(v)

    def etag(self) -> str:
        """A digest of the whole table, secrets included, so that a rotated secret is
        pushed; 64 bits of a SHA-256 give nothing of a 256-bit secret away."""
        raw = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(raw).hexdigest()[:16]

    def redacted(self) -> dict[str, object]:
        """The table as JSON with each secret replaced by ``"***"``: what may be shown."""
        doc = self.model_dump(mode="json")
        doc["secrets"] = dict.fromkeys(self.secrets, "***")
        return doc


@dataclass(eq=False)
class Group:
    version: int | None
    weight: float
    replicas: list[Upstream]
    balancer: Balancer

    def candidates(self, exclude: Sequence[Upstream]) -> list[Upstream]:
        """Healthy replicas not yet tried; failing that (panic), any not yet tried."""
        healthy = [u for u in self.replicas if u.healthy and u not in exclude]
        return healthy or [u for u in self.replicas if u not in exclude]


@dataclass(eq=False)
class Pool:
    name: str
    groups: list[Group]
    shadow: Group | None
    shadow_percent: float
    _cum: list[float]
    limits: PoolLimits | None = None

    def choose_group(self, rnd: float) -> Group:
        """A group by weight; ``rnd`` in [0, 1). A group with no healthy replica gives its
        share to the other one rather than fail requests."""
        if len(self.groups) == 1:
            return self.groups[0]
        at = bisect.bisect(self._cum, rnd * self._cum[-1]) if self._cum[-1] > 0 else 0
        # Past the end when rnd * total rounds up to the total, or weights sum to inf.
        g = self.groups[min(at, len(self.groups) - 1)]
        if any(u.healthy for u in g.replicas):
            return g
        for other in self.groups:
            if any(u.healthy for u in other.replicas):
                return other
        return g

    def mirror(self) -> Group | None:
        if self.shadow is None or not self.shadow.replicas:
            return None
        if self.shadow_percent >= 100 or random.random() * 100 < self.shadow_percent:
            return self.shadow
        return None


class RouteTable:
    """An immutable snapshot of the routes; build a new one to change anything."""

    def __init__(self, spec: RoutesSpec, policy: str, known: dict[str, Upstream],
                 tls: ssl.SSLContext | None = None) -> None:
        self.spec = spec
        self.tls = tls
        self.etag = spec.etag()
        self.policy = spec.policy or policy
        self.pools: dict[str, Pool] = {}
        self.upstreams: dict[str, Upstream] = {}
        for name, ps in spec.deployments.items():
            policy = ps.policy or self.policy
            groups = [self._group(g.version, g.weight, g.replicas, known, spec.secrets, policy)
                      for g in ps.groups]
            cum, total = [], 0.0
            for g in groups:
                total += g.weight
                cum.append(total)
            shadow = (self._group(ps.shadow.version, 0, ps.shadow.replicas, known,
                                  spec.secrets, policy) if ps.shadow else None)
            self.pools[name] = Pool(name, groups, shadow,
                                    ps.shadow.percent if ps.shadow else 0.0, cum, ps.limits)
        self.wildcard = self.pools.get(WILDCARD)

    def _group(self, version: int | None, weight: float, urls: Iterable[str],
               known: dict[str, Upstream], secrets: Mapping[str, str], policy: str) -> Group:
        ups = []
        for url in urls:
            up = Upstream(url, self.tls)  # normalises the URL
            up = known.get(up.url) or self.upstreams.get(up.url) or up
            # A port can come back as another replica (a restart, a new generation).
            up.set_secret(secrets.get(url))
            self.upstreams[up.url] = up
            ups.append(up)
        return Group(version, weight, ups, make_balancer(policy))

    def pool(self, model: str) -> Pool | None:
        return self.pools.get(model) or self.wildcard

    def describe(self) -> dict[str, object]:
        return {
            "etag": self.etag,
            "policy": self.policy,
            "routes": self.spec.redacted(),
            "replicas": {
                u.url: {"healthy": u.healthy, "outstanding": u.outstanding,
                        "inflight_s": round(u.inflight_so_far(), 6),
                        "requests": u.requests, "errors": u.errors}
                for u in self.upstreams.values()
            },
        }


def merge(parts: Mapping[str, RoutesSpec]) -> RoutesSpec:
    """One table from the tables of the deployments sharing a gateway (by deployment name).

    Each part's policy moves onto its pools, so one deployment's choice does not become
    another's. A model name two deployments claim goes to the first by name (the control
    plane refuses such a deploy; this keeps a table from a stale store deterministic)."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    pools: dict[str, PoolSpec] = {}
    secrets: dict[str, str] = {}
    for _, part in sorted(parts.items()):
        for model, pool in part.deployments.items():
            if model not in pools:
                pools[model] = (pool if pool.policy or not part.policy
                                else pool.model_copy(update={"policy": part.policy}))
        secrets.update(part.secrets)
    return RoutesSpec(deployments=pools, secrets=secrets)


def static_routes(replicas: Sequence[str], secret: str | None = None) -> RoutesSpec:
    """The table of ``python -m stratum.gateway --replica URL ...``: one wildcard pool,
    every replica sharing ``secret`` when one is given."""
    if not replicas:
        return RoutesSpec()
    return RoutesSpec(deployments={WILDCARD: PoolSpec(groups=[GroupSpec(replicas=list(replicas))])},
                      secrets=dict.fromkeys(replicas, secret) if secret else {})
