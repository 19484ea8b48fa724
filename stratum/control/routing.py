"""From the replicas that are ready to the routing table a gateway gets.

The rule that makes a rolling update lossless: traffic moves to the wanted version only
once it has as many ready replicas as wanted; until then the replicas of the version
being replaced keep the traffic. A canary gets ``percent`` of the requests once one of its
replicas is ready; a shadow gets a mirrored copy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from stratum.control.spec import DeploymentSpec, route_names
from stratum.gateway.traffic import GroupSpec, PoolSpec, RoutesSpec, ShadowSpec


class ReplicaLike(Protocol):
    id: str
    version: int
    state: str
    started: float
    secret: str

    @property
    def url(self) -> str: ...


def compute_routes(
    name: str, spec: DeploymentSpec, replicas: Iterable[ReplicaLike],
) -> tuple[RoutesSpec | None, list[dict[str, Any]], set[str]]:
    """``(routes, traffic, serving ids)``; routes is None while nothing can serve, except
    that a deployment scaled to zero gets its pool with no replica in it: the gateway then
    holds requests (``gateway.hold``) instead of answering 404 "not deployed"."""
    ready = sorted((r for r in replicas if r.state == "ready"), key=lambda r: r.started)
    wanted = spec.versions()

    def of(version: int, n: int) -> list[ReplicaLike]:
        return [r for r in ready if r.version == version][:n]

    primary = of(spec.version, spec.replicas)
    stale = [r for r in ready if r.version not in wanted]
    if len(primary) < spec.replicas and stale:
        # The new version is not fully up: the old replicas keep serving meanwhile.
        main, main_version = stale, Counter(r.version for r in stale).most_common(1)[0][0]
    else:
        main, main_version = primary, spec.version
    if not main and spec.replicas:
        return None, [], set()
    groups = [GroupSpec(version=main_version, weight=100.0, replicas=[r.url for r in main])]
    serving = {r.id for r in main}
    canary = of(spec.canary.version, 1) if spec.canary else []
    if spec.canary and canary and spec.canary.version != main_version:
        groups[0].weight = 100.0 - spec.canary.percent
        groups.append(GroupSpec(version=spec.canary.version, weight=spec.canary.percent,
                                replicas=[r.url for r in canary]))
        serving |= {r.id for r in canary}
    shadow = None
    shadows = of(spec.shadow.version, 1) if spec.shadow else []
    if spec.shadow and shadows:
        shadow = ShadowSpec(version=spec.shadow.version, replicas=[r.url for r in shadows])
        serving |= {r.id for r in shadows}
    pool = PoolSpec(groups=groups, shadow=shadow, limits=spec.limits)
    # Clients may name the model or the deployment in the path.
    pools = dict.fromkeys(sorted(route_names(name, spec)), pool)
    traffic = [{"version": g.version, "weight": g.weight, "replicas": len(g.replicas)}
               for g in groups]
    if shadow is not None:
        traffic.append({"version": shadow.version, "weight": 0, "shadow": True,
                        "replicas": len(shadow.replicas)})
    secrets = {r.url: r.secret for r in ready if r.id in serving and r.secret}
    return RoutesSpec(deployments=pools, policy=spec.policy, secrets=secrets), traffic, serving


def to_retire(spec: DeploymentSpec, replicas: Iterable[ReplicaLike], serving: set[str],
              ) -> set[str]:
    """Ready replicas to drain once ``serving`` is installed: those of versions no longer
    wanted and the surplus of wanted ones. A new version's replicas that are ready but not
    yet serving (it is still coming up) are kept, of course."""
    ready = sorted((r for r in replicas if r.state == "ready"), key=lambda r: r.started)
    keep = set(serving)
    for version, n in spec.versions().items():
        keep |= {r.id for r in ready if r.version == version and r.id not in serving}
        kept = [r for r in ready if r.version == version and r.id in keep]
        for r in kept[n:]:  # the newest beyond the wanted count go
            if r.id not in serving:
                keep.discard(r.id)
    return {r.id for r in ready if r.id not in keep}
