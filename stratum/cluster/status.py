"""What a cluster holds: its nodes (address, alive, resources) from the GCS, and what of
Stratum runs on each, from the deployments' observed state in the store (every replica
records the address it serves on)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stratum.cluster.connect import cluster_address, token_file
from stratum.cluster.gcs import nodes, probe, use_token
from stratum.cluster.local import read
from stratum.config import Settings
from stratum.store.metadata import MetadataStore

THIS_MACHINE = "this machine"  # where local replicas, gateways and the control plane run


@dataclass
class NodeStatus:
    ip: str
    node_id: str
    alive: bool
    head: bool
    cpus: float
    gpus: float
    runs: list[str] = field(default_factory=list)  # "replica DEPLOYMENT/ID vN :PORT"


@dataclass
class ClusterStatus:
    address: str
    local: bool  # the local cluster of this home (`stratum cluster up`)
    nodes: list[NodeStatus]
    elsewhere: dict[str, list[str]] = field(default_factory=dict)  # host → what runs there

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cluster_status(settings: Settings, meta: MetadataStore | None = None) -> ClusterStatus:
    """The cluster the settings name, read back from its GCS (a ``ClusterError`` within
    ``cluster.connect_timeout_s`` when it does not answer)."""
    address = cluster_address(settings)
    timeout = settings.cluster.connect_timeout_s
    use_token(token_file(settings))
    probe(address, timeout)
    found = [NodeStatus(ip=n.ip, node_id=n.node_id, alive=n.alive, head=n.head, cpus=n.cpus,
                        gpus=n.gpus) for n in nodes(address, timeout)]
    local = read(settings.home)
    status = ClusterStatus(address=address, nodes=found,
                           local=local is not None and local.address == address)
    by_ip = {n.ip: n for n in found if n.alive}
    for host, what in _stratum_processes(meta):
        if host in by_ip:
            by_ip[host].runs.append(what)
        else:
            status.elsewhere.setdefault(THIS_MACHINE if host.startswith("127.0.0.1")
                                        else host, []).append(what)
    return status


def _stratum_processes(meta: MetadataStore | None) -> list[tuple[str, str]]:
    """``(host, description)`` of every replica and gateway the store saw last."""
    if meta is None:
        return []
    out = []
    for dep in meta.deployments():
        obs = dep.observed or {}
        for r in obs.get("replicas") or []:
            host = str(r.get("host") or "127.0.0.1")
            out.append((host, f"replica {dep.name}/{r.get('id')} v{r.get('version')} "
                              f":{r.get('port')} {r.get('state')}"))
        for g in obs.get("gateways") or []:
            out.append(("127.0.0.1", f"gateway {dep.name}/{g.get('slot')} :{g.get('port')}"))
    return out


__all__ = ["THIS_MACHINE", "ClusterStatus", "NodeStatus", "cluster_status"]
