"""The routing table: per model, one or two weighted version groups (canary) and an
optional shadow group that receives a fire-and-forget copy of the traffic.

The table is replaced whole and atomically (one attribute assignment) when the supervisor
PUTs ``/admin/routes``; replicas are kept by URL across tables, so a route update keeps
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


class GroupSpec(BaseModel):
    version: int | None = None
    weight: float = Field(100.0, ge=0)
    replicas: list[str] = Field(default_factory=list)


class ShadowSpec(BaseModel):
    version: int | None = None
    percent: float = Field(100.0, ge=0, le=100)
    replicas: list[str] = Field(min_length=1)


class PoolSpec(BaseModel):
    groups: list[GroupSpec] = Field(min_length=1, max_length=2)
    shadow: ShadowSpec | None = None


class RoutesSpec(BaseModel):
    """What the supervisor PUTs to ``/admin/routes`` (and what ``--replica`` builds)."""

    deployments: dict[str, PoolSpec] = Field(default_factory=dict)
    policy: str | None = None  # None: the gateway's configured policy
    # Replica URL → the secret of the deployment generation that started it.
    secrets: dict[str, Secret] = Field(default_factory=dict)

    @field_validator("policy")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in POLICIES:
            raise ValueError(f"unknown policy {v!r}; use one of {', '.join(POLICIES)}")
        return v

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
            groups = [self._group(g.version, g.weight, g.replicas, known, spec.secrets)
                      for g in ps.groups]
            cum, total = [], 0.0
            for g in groups:
                total += g.weight
                cum.append(total)
            shadow = (self._group(ps.shadow.version, 0, ps.shadow.replicas, known,
                                  spec.secrets) if ps.shadow else None)
            self.pools[name] = Pool(name, groups, shadow,
                                    ps.shadow.percent if ps.shadow else 0.0, cum)
        self.wildcard = self.pools.get(WILDCARD)

    def _group(self, version: int | None, weight: float, urls: Iterable[str],
               known: dict[str, Upstream], secrets: Mapping[str, str]) -> Group:
        ups = []
        for url in urls:
            up = Upstream(url, self.tls)  # normalises the URL
            up = known.get(up.url) or self.upstreams.get(up.url) or up
            # A port can come back as another replica (a restart, a new generation).
            up.set_secret(secrets.get(url))
            self.upstreams[up.url] = up
            ups.append(up)
        return Group(version, weight, ups, make_balancer(self.policy))

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


def static_routes(replicas: Sequence[str], secret: str | None = None) -> RoutesSpec:
    """The table of ``python -m stratum.gateway --replica URL ...``: one wildcard pool,
    every replica sharing ``secret`` when one is given."""
    if not replicas:
        return RoutesSpec()
    return RoutesSpec(deployments={WILDCARD: PoolSpec(groups=[GroupSpec(replicas=list(replicas))])},
                      secrets=dict.fromkeys(replicas, secret) if secret else {})
