"""What the supervisor knows of each deployment: the wanted spec it works towards, its
replicas and gateway as last observed, and the counters behind restarts and give-ups; and
the document it reports from that (``observed``). Plain data: ``reconcile`` decides on it,
``supervisor`` fills it from processes and probes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from stratum.control.spec import DeploymentSpec


@dataclass(eq=False)
class Replica:
    id: str
    version: int
    port: int
    pid: int
    started: float
    state: str = "starting"  # starting → ready → draining; gone once the process exits
    swapping: int | None = None  # the version a hot swap is loading, while it does
    healthy: bool = False
    secret: str = field(default="", repr=False)  # its generation's, given at start
    scheme: str = "http"  # "https" under serve.tls
    host: str = "127.0.0.1"  # where it serves: a cluster node's address under Ray

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(eq=False)
class Gateway:
    """One gateway process of a deployment. Several share the public ``port``
    (SO_REUSEPORT: the kernel spreads connections), those of the deployment and those of
    any other deployment on that port, so each serves all of their tables; each also
    listens on its own loopback ``admin_port``, where the supervisor's probes and pushes
    reach exactly this one."""

    slot: int  # 0 .. spec.gateways - 1
    pid: int
    port: int
    admin_port: int
    live: bool = False
    # Deployment → the etag of its table this gateway acknowledged: a gateway serves every
    # deployment on its port, its own and the others'.
    pushed: dict[str, str] = field(default_factory=dict)
    scheme: str = "http"

    @property
    def id(self) -> str:
        return f"gateway-{self.slot}"

    @property
    def admin_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.admin_port}"


@dataclass(eq=False)
class DeploymentState:
    name: str
    spec: DeploymentSpec | None = None  # None once undeployed, until everything stopped
    generation: int = 0
    replicas: dict[str, Replica] = field(default_factory=dict)
    gateways: dict[int, Gateway] = field(default_factory=dict)  # by slot
    gateway_failures: Counter[int] = field(default_factory=Counter)  # by slot
    traffic: list[dict[str, Any]] = field(default_factory=list)
    start_failures: Counter[int] = field(default_factory=Counter)
    crash_streak: Counter[int] = field(default_factory=Counter)
    next_start: dict[int | str, float] = field(default_factory=dict)
    good_versions: set[int] = field(default_factory=set)
    given_up: set[int] = field(default_factory=set)  # versions that never got ready
    # Version → (the generation that gave it up, the error it failed with): a give-up is
    # said once per generation, not every tick; cleared with ``start_failures``.
    give_ups: dict[int, tuple[int, str]] = field(default_factory=dict)
    last_error: dict[str, Any] | None = None
    last_observed: dict[str, Any] | None = None
    seq: int = 0
    # The secret replicas started for the current generation get; a new generation gets a
    # new one, so a redeploy rotates it (never reported in ``observed``).
    secret: str = field(default="", repr=False)
    # What the gateway's /admin/* takes from us; kept across generations and leaders.
    gateway_token: str = field(default="", repr=False)

    @property
    def finished(self) -> bool:
        """Undeployed and nothing of it runs any more: the state can go."""
        return self.spec is None and not self.replicas and not self.gateways

    @property
    def gateway_live(self) -> bool:
        """Some gateway serves."""
        return any(g.live for g in self.gateways.values())


def observed(st: DeploymentState, spec: DeploymentSpec, converged: bool,
             host: str, scheme: str = "http") -> tuple[str, dict[str, Any]]:
    """``(status, document)`` reported for a deployment; ``converged``: the gateway holds
    the routing table of the replicas as they are now."""
    wanted = spec.versions()
    ready = Counter(r.version for r in st.replicas.values() if r.state == "ready")
    settled = converged and all(ready[v] >= n for v, n in wanted.items()) and all(
        r.version in wanted and r.state == "ready" for r in st.replicas.values())
    given_up = any(st.next_start.get(v) == float("inf") for v in wanted)
    serving = converged and st.gateway_live and bool(ready)
    all_gateways = sum(g.live for g in st.gateways.values()) >= spec.gateways
    if settled and all_gateways:
        status = "ready"
    elif given_up and not ready:
        status = "failed"
    elif not serving:
        status = "starting"
    elif any(r.version not in wanted for r in st.replicas.values()):
        status = "updating"
    else:
        status = "degraded"
    doc = {
        "generation": st.generation, "status": status,
        # Where clients go: the public port every gateway of the deployment shares.
        "gateway": {"port": spec.port, "live": st.gateway_live,
                    "pid": next((g.pid for g in st.gateways.values() if g.live), None),
                    "url": f"{scheme}://{host}:{spec.port}"},
        "gateways": [{"slot": g.slot, "pid": g.pid, "port": g.port, "admin_port": g.admin_port,
                      "live": g.live} for g in sorted(st.gateways.values(),
                                                       key=lambda g: g.slot)],
        "replicas": [{"id": r.id, "version": r.version, "pid": r.pid, "port": r.port,
                      "host": r.host, "url": r.url, "state": r.state, "healthy": r.healthy}
                     for r in st.replicas.values()],
        "traffic": st.traffic, "last_error": st.last_error,
    }
    return status, doc


def settling(status: str) -> bool:
    """Whether a deployment in ``status`` is still in transition (worth a quick recheck)."""
    return status not in ("ready", "failed")
