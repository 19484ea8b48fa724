"""Joining a Ray cluster as a driver, and what a cluster of several nodes asks of the
settings.

``connect`` checks first, in bounded time, that a Ray GCS answers at the address (``gcs.
probe``): ``ray.init`` itself would retry an address where nothing answers for minutes.
A process on the head's machine of a local cluster attaches to the head's raylet (the
nodes' loopback addresses are not the machine's own, which is where Ray would look).

Every process a cluster runs reaches shared state by URL: a node cannot open another
node's SQLite file or local folder, so ``require_shared_storage`` refuses those settings
on a cluster of more than one node, naming what to configure instead.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

from stratum.cluster.gcs import NodeInfo, nodes, probe, split_address, use_token
from stratum.config import Settings
from stratum.errors import ClusterError, ConfigError

# The namespace of every named actor Stratum makes (hosted replicas); per home below it.
NAMESPACE = "stratum"
# Where an artifact URL with one of these schemes lives, only this machine can read it.
_LOCAL_SCHEMES = {"", "file", "local", "memory"}


def cluster_address(settings: Settings) -> str:
    """``cluster.address``, or the local cluster recorded in the home."""
    from stratum.cluster.local import read

    if settings.cluster.address:
        return settings.cluster.address
    local = read(settings.home)
    if local is None:
        raise ConfigError("no Ray cluster: cluster.address is not set and no local cluster "
                          f"runs for {settings.home}",
                          hint="`stratum cluster up --nodes 3` starts one here; for a real "
                               "cluster set cluster.address to its head's HOST:PORT")
    return local.address


def token_file(settings: Settings) -> Path | None:
    """The Ray auth token to send: ``cluster.auth_token_file``, else that of the local
    cluster we talk to (this home's, or another home's on this machine at
    ``cluster.address``), else Ray's defaults (None)."""
    from stratum.cluster.local import by_address, read

    if settings.cluster.auth_token_file is not None:
        return settings.cluster.auth_token_file
    local = by_address(settings.cluster.address) if settings.cluster.address \
        else read(settings.home)
    return Path(local.auth_token_file) if local is not None else None


def connect(address: str, *, timeout_s: float = 10.0, auth_token_file: Path | None = None,
            ) -> list[NodeInfo]:
    """Join the Ray cluster at ``address`` (HOST:PORT of its GCS) as a driver, unless this
    process already has; the cluster's live nodes. A ``ClusterError`` within about
    ``timeout_s`` when nothing (or not Ray) answers there, e.g. ``cannot reach the Ray
    cluster at 127.0.0.1:1: Connection refused``."""
    import ray

    host, _ = split_address(address)
    use_token(auth_token_file)
    probe(address, timeout_s)
    if not ray.is_initialized():
        # The nodes of a local cluster have loopback addresses; a driver on this machine
        # attaches to the head's raylet. Elsewhere Ray finds the node this process runs on.
        node_ip = host if _loopback(host) else None
        # Ray's driver takes SIGTERM over on the main thread; ours (a graceful stop) stays.
        term = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address, namespace=NAMESPACE, _node_ip_address=node_ip,
                     logging_level=logging.WARNING, log_to_driver=False,
                     configure_logging=False)
        except Exception as exc:  # Ray raises plain ConnectionError/RuntimeError
            raise ClusterError(f"could not join the Ray cluster at {address}: {exc}",
                               hint="this process must run on a node of the cluster (or "
                                    "on the head's machine for a local one)") from exc
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, term)
    live = [n for n in nodes(address, timeout_s) if n.alive]
    if not live:
        raise ClusterError(f"the Ray cluster at {address} has no live node")
    return live


def connect_settings(settings: Settings) -> list[NodeInfo]:
    """``connect`` to the cluster the settings name (``cluster_address``)."""
    return connect(cluster_address(settings), timeout_s=settings.cluster.connect_timeout_s,
                   auth_token_file=token_file(settings))


def require_shared_storage(settings: Settings, node_count: int, *, queue: bool = True) -> None:
    """Refuse settings whose metadata, artifacts (or, with ``queue``, feedback queue) live
    in files of this machine when ``node_count`` nodes must reach them."""
    if node_count <= 1:
        return
    problems, fixes = [], []
    meta = str(settings.metadata_url)
    if meta.startswith("sqlite"):
        problems.append(f"metadata_url is a SQLite file ({meta})")
        fixes.append("metadata_url: postgresql://USER@HOST/DB")
    art = str(settings.artifact_url)
    if urlsplit(art).scheme.lower() in _LOCAL_SCHEMES:
        problems.append(f"artifact_url is a local folder ({art})")
        fixes.append("artifact_url: s3://BUCKET/PREFIX (artifact_options.endpoint_url for "
                     "an S3-compatible store)")
    if queue and str(settings.queue_url).startswith("sqlite"):
        problems.append(f"queue_url is a SQLite file ({settings.queue_url})")
        fixes.append("queue_url: redis://HOST:6379/0")
    if problems:
        raise ConfigError(f"the Ray cluster has {node_count} nodes and the other nodes "
                          f"cannot see this machine's files: {'; '.join(problems)}",
                          hint="set " + "; ".join(fixes))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


__all__ = ["NAMESPACE", "cluster_address", "connect", "connect_settings",
           "require_shared_storage", "token_file"]
