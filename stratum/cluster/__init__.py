"""Ray as Stratum's cluster engine: a local multi-node cluster for development and tests,
joining a cluster as a driver (bounded in time, clear errors), the storage a cluster of
several nodes needs, what runs where, and the actor that hosts one of our processes on a
node. Ray is imported only when a function here needs it (docs/cluster.md)::

    cluster = local.start(home, nodes=3)     # head 127.0.0.2, workers .3 and .4
    nodes = connect(cluster.address, auth_token_file=Path(cluster.auth_token_file))
    local.stop(home)
"""

from stratum.cluster import local
from stratum.cluster.connect import (
    NAMESPACE,
    cluster_address,
    connect,
    connect_settings,
    require_shared_storage,
    token_file,
)
from stratum.cluster.gcs import NodeInfo, nodes, probe
from stratum.cluster.local import LocalCluster, LocalNode
from stratum.cluster.status import ClusterStatus, NodeStatus, cluster_status

__all__ = [
    "NAMESPACE",
    "ClusterStatus",
    "LocalCluster",
    "LocalNode",
    "NodeInfo",
    "NodeStatus",
    "cluster_address",
    "cluster_status",
    "connect",
    "connect_settings",
    "local",
    "nodes",
    "probe",
    "require_shared_storage",
    "token_file",
]
