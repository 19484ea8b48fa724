"""The wanted state of a deployment, as stored by ``store.meta.put_deployment``.

References are resolved to version numbers when a deployment is written, so a later alias
move does not silently change what runs: ``stratum deploy mnist@production`` pins the
version ``production`` named at that moment. ``--follow`` opts in to tracking the alias
instead: the supervisor rolls the deployment onto every version the alias moves to (that
is how the online learner's promotions reach the replicas).

Anything that names another version on a following deployment (``deploy NAME@3``, a
canary on a fixed version, ``rollback``) pins it: following would undo it at the next
reconcile, silently. The answer says so (``pin_notice``); ``--follow`` follows again.

An autoscaled deployment (``autoscale``: ``--min-replicas``/``--max-replicas``) has its
``replicas`` written by the autoscaler; an explicit count (``stratum scale``, ``deploy
--replicas N`` without bounds) fixes it and turns autoscaling off, and says so
(``autoscale_notice``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from stratum.config.settings import ControlSettings
from stratum.control.autoscale import AutoscaleSpec, Scaling, resolve_scaling
from stratum.errors import ConfigError, ConflictError
from stratum.gateway.traffic import PoolLimits
from stratum.security.names import validate_name
from stratum.store import parse_ref
from stratum.store.metadata import MetadataStore


class VersionRef(BaseModel):
    ref: str  # what the user typed: "3", "production", "latest"
    version: int


class CanarySpec(VersionRef):
    percent: float = Field(gt=0, lt=100)


class DeploymentSpec(BaseModel):
    model: str
    ref: str
    version: int
    replicas: int = Field(1, ge=0, le=64)  # 0: scaled to zero (autoscale.min_replicas 0)
    # Gateway processes sharing ``port``: with two, a gateway's death or restart loses
    # only the requests it held.
    gateways: int = Field(1, ge=1, le=8)
    port: int = Field(ge=1, le=65_535)
    canary: CanarySpec | None = None
    shadow: VersionRef | None = None
    previous: VersionRef | None = None  # what `stratum rollback` goes back to
    policy: str | None = None
    follow: str | None = None  # an alias whose moves roll the deployment
    autoscale: AutoscaleSpec | None = None  # None: ``replicas`` stays as set
    # Its own key requirement and rate limit on the gateways it shares a port with.
    limits: PoolLimits | None = None
    # Where its replicas run (cluster.backend when first deployed; docs/cluster.md) and
    # what each asks of a Ray node (a local replica is a process of this machine).
    backend: Literal["local", "ray"] = "local"
    cpus: float = Field(1.0, gt=0, le=1024)
    gpus: float = Field(0.0, ge=0, le=64)

    @model_validator(mode="after")
    def _zero_only_when_autoscaled(self) -> DeploymentSpec:
        if self.replicas == 0 and (self.autoscale is None or self.autoscale.min_replicas):
            raise ValueError("0 replicas needs autoscaling with min_replicas 0")
        return self

    def versions(self) -> dict[int, int]:
        """``{version: replicas wanted}``: the primary's count, one for a canary/shadow."""
        out = {self.version: self.replicas}
        for extra in (self.canary, self.shadow):
            if extra is not None and extra.version not in out:
                out[extra.version] = 1
        return out

    def describe(self) -> str:
        text = f"{self.model}@v{self.version} x{self.replicas}"
        if self.autoscale:
            text += f" (autoscaled {self.autoscale.min_replicas}..{self.autoscale.max_replicas})"
        if self.canary:
            text += f" + canary v{self.canary.version} {self.canary.percent:g}%"
        if self.shadow:
            text += f" + shadow v{self.shadow.version}"
        return text


def parse_canary(text: str) -> tuple[str, str | None, float]:
    """``"mnist@5:10"`` → ``("mnist", "5", 10.0)``."""
    ref, sep, pct = text.rpartition(":")
    if not sep:
        raise ConfigError(f"canary {text!r} must look like NAME@VERSION:PERCENT, e.g. mnist@5:10")
    try:
        percent = float(pct)
    except ValueError as exc:
        raise ConfigError(f"canary percent {pct!r} is not a number") from exc
    if not 0 < percent < 100:
        raise ConfigError(f"canary percent must be between 0 and 100 (exclusive), got {pct}")
    name, version = parse_ref(ref)
    return name, version, percent


def resolve(meta: MetadataStore, model: str, ref: str | None, what: str = "model") -> VersionRef:
    validate_name(model, f"{what} name")
    mv = meta.model_version(model, ref)  # NotFoundError (404) names the missing version
    return VersionRef(ref=ref or "latest", version=mv.version)


def build_spec(
    meta: MetadataStore, model_ref: str, *, current: DeploymentSpec | None,
    replicas: int | None, port: int | None, default_port: int,
    canary: str | None = None, shadow: str | None = None, policy: str | None = None,
    follow: bool | None = None, gateways: int | None = None,
    scaling: Scaling | None = None, defaults: ControlSettings | None = None,
    limits: PoolLimits | None = None,
) -> DeploymentSpec:
    """The new wanted state from a deploy request and the current spec (if any)."""
    count, autoscale = resolve_scaling(scaling, replicas, current.replicas if current else None,
                                       current.autoscale if current else None,
                                       defaults or ControlSettings())
    model, ref = parse_ref(model_ref)
    main = resolve(meta, model, ref)
    can = sha = None
    if canary:
        c_model, c_ref, pct = parse_canary(canary)
        if c_model != model:
            raise ConfigError(f"the canary must be a version of {model}, not {c_model}")
        c = resolve(meta, c_model, c_ref, "canary")
        can = CanarySpec(ref=c.ref, version=c.version, percent=pct)
    if shadow:
        s_model, s_ref = parse_ref(shadow)
        if s_model != model:
            raise ConfigError(f"the shadow must be a version of {model}, not {s_model}")
        sha = resolve(meta, s_model, s_ref, "shadow")
    if follow is None:
        # Keep following only while the request names the followed alias itself.
        follow_alias = current.follow if current and ref == current.follow else None
    elif follow:
        if ref is None or ref.isdigit() or ref == "latest":
            raise ConfigError(f"--follow needs an alias to follow, e.g. {model}@production",
                              hint=f"{model_ref!r} names a fixed version")
        follow_alias = ref
    else:
        follow_alias = None
    previous = current.previous if current else None
    if current is not None and current.version != main.version:
        previous = VersionRef(ref=current.ref, version=current.version)
    return DeploymentSpec(
        model=model, ref=main.ref, version=main.version,
        replicas=count, autoscale=autoscale,
        gateways=gateways or (current.gateways if current else 1),
        port=port or (current.port if current else default_port),
        canary=can, shadow=sha, previous=previous,
        policy=policy if policy is not None else (current.policy if current else None),
        follow=follow_alias,
        limits=limits if limits is not None else (current.limits if current else None),
    )


def route_names(name: str, spec: DeploymentSpec) -> set[str]:
    """The names clients may use in a path to reach deployment ``name``."""
    return {name, spec.model}


def check_shared_port(name: str, spec: DeploymentSpec,
                      neighbours: dict[str, DeploymentSpec]) -> None:
    """Several deployments may share a gateway port, each reached by its own names; refuse
    one whose deployment or model name another on the port answers to already."""
    mine = route_names(name, spec)
    for other, ns in sorted(neighbours.items()):
        clash = mine & route_names(other, ns)
        if clash:
            raise ConflictError(
                f"deployment {other} on port {spec.port} already answers to "
                f"{', '.join(sorted(clash))}",
                hint=f"deploy {name} on another --port, or under another --name than "
                     f"{', '.join(sorted(clash))}")


def followed(spec: DeploymentSpec, version: int) -> DeploymentSpec:
    """The spec rolled onto ``version``, where its followed alias now points."""
    return spec.model_copy(update={
        "ref": spec.follow, "version": version, "canary": None,
        "previous": VersionRef(ref=spec.ref, version=spec.version),
    })


def rolled_back(spec: DeploymentSpec) -> DeploymentSpec:
    """Back to the previous version, pinned: a followed alias still names the version
    rolled back from, and following it would roll forward again at once."""
    if spec.previous is None:
        raise ConflictError(f"{spec.model} has no previous version to roll back to")
    return spec.model_copy(update={
        "ref": spec.previous.ref, "version": spec.previous.version, "canary": None,
        "previous": VersionRef(ref=spec.ref, version=spec.version), "follow": None,
    })


def pin_notice(current: DeploymentSpec | None, new: DeploymentSpec) -> str | None:
    """What to tell the user when a change stopped a deployment from following its alias."""
    if current is None or current.follow is None or new.follow is not None:
        return None
    return (f"pinned to v{new.version}: the deployment no longer follows "
            f"{current.model}@{current.follow} (a new version there would undo this change); "
            f"`stratum deploy {current.model}@{current.follow} --follow` follows it again")


def autoscale_notice(current: DeploymentSpec | None, new: DeploymentSpec) -> str | None:
    """What to tell the user when a change turned autoscaling off (an explicit count)."""
    if current is None or current.autoscale is None or new.autoscale is not None:
        return None
    a = current.autoscale
    return (f"autoscaling off: fixed at {new.replicas} replica(s) (it scaled between "
            f"{a.min_replicas} and {a.max_replicas}); `stratum deploy {new.model}@{new.ref} "
            f"--min-replicas {a.min_replicas} --max-replicas {a.max_replicas}` turns it on again")


def load_spec(raw: dict[str, Any] | None) -> DeploymentSpec | None:
    return DeploymentSpec.model_validate(raw) if raw else None
