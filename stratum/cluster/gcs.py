"""Asking a Ray cluster's GCS (its head's directory of nodes) what it holds, in bounded
time, without becoming a Ray driver: whether anything answers at an address, and the
nodes with their addresses, liveness and resources.

``ray.init`` against an address where no GCS answers retries for minutes; every call here
gives up after ``timeout_s`` with a ``ClusterError`` that says what was found there.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratum.errors import ClusterError, ConfigError

# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (the GCS is one)
# answers with a SETTINGS frame of its own; Redis, HTTP/1 servers and the like do not.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x04


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    ip: str
    alive: bool
    head: bool
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def cpus(self) -> float:
        return self.resources.get("CPU", 0.0)

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)


def split_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; a ``ray://`` or other URL is refused."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or "/" in host or not port.isdigit():
        raise ConfigError(f"cluster.address {address!r} is not HOST:PORT",
                          hint="the Ray head's GCS address, e.g. 10.0.0.5:6380 "
                               "(`stratum cluster status` shows a local cluster's)")
    return host, int(port)


def use_token(token_file: Path | None) -> None:
    """Make Ray in this process send the token in ``token_file`` (Ray's token
    authentication); to be called before the first connection. None: Ray's own defaults
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    if token_file is None:
        return
    if not token_file.is_file():
        raise ConfigError(f"cluster.auth_token_file {token_file} does not exist",
                          hint="the token file the cluster's nodes were started with")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    os.environ["RAY_AUTH_MODE"] = "token"
    _raylet().Config.initialize("")  # Ray caches its settings: it reads them again


def probe(address: str, timeout_s: float = 5.0) -> None:
    """Raise ``ClusterError`` unless a Ray GCS answers at ``address``; at most about
    ``timeout_s`` seconds for a refused or silent address, a little more for a gRPC
    server that is not Ray's."""
    host, port = split_address(address)
    where = f"the Ray cluster at {address}"
    hint = ("start one with `stratum cluster up`, or set cluster.address to your Ray "
            "head's GCS address (HOST:PORT, port 6379 unless its `ray start --port` said "
            "otherwise)")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(_H2_PREFACE)
            head = sock.recv(9)
    except OSError as exc:
        raise ClusterError(f"cannot reach {where}: {exc.strerror or exc}", hint=hint) from exc
    if len(head) < 9 or head[3] != _SETTINGS:
        raise ClusterError(f"{where} answers, but not as a Ray GCS (no gRPC there; "
                           f"is it another service's port?)", hint=hint)
    _client(address, timeout_s)


def nodes(address: str, timeout_s: float = 5.0) -> list[NodeInfo]:
    """The cluster's nodes, alive and dead, as its GCS knows them."""
    alive_state = importlib.import_module("ray.core.generated.gcs_pb2").GcsNodeInfo.ALIVE
    infos = _client(address, timeout_s).get_all_node_info(timeout=timeout_s)
    out = []
    for node_id, info in infos.items():
        out.append(NodeInfo(
            node_id=node_id.hex(), ip=info.node_manager_address,
            alive=info.state == alive_state,
            head=bool(info.is_head_node),
            resources={k: float(v) for k, v in info.resources_total.items()}))
    return sorted(out, key=lambda n: (not n.head, n.ip, n.node_id))


def alive_node_ips(address: str, timeout_s: float = 5.0) -> set[str]:
    return {n.ip for n in nodes(address, timeout_s) if n.alive}


def _client(address: str, timeout_s: float) -> Any:
    from ray.exceptions import AuthenticationError, RpcError

    try:
        return _raylet().InnerGcsClient.standalone(address, None, int(timeout_s * 1000))
    except AuthenticationError as exc:
        raise ClusterError(f"the Ray cluster at {address} refused our token: {exc}",
                           hint="set cluster.auth_token_file to the token file its nodes "
                                "were started with") from exc
    except RpcError as exc:
        raise ClusterError(f"the Ray GCS at {address} did not answer: {exc}") from exc


def _raylet() -> Any:
    """Ray's compiled core (its Python stubs do not show what is used here)."""
    return importlib.import_module("ray._raylet")


__all__ = ["NodeInfo", "alive_node_ips", "nodes", "probe", "split_address", "use_token"]
