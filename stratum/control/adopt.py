"""Adopting what a previous control plane left running, instead of orphaning it.

A control plane that starts (a restart, or a follower that became leader) finds each
deployment's last observed document (replica pids, ports, versions; the gateway's pid and
port) and its runtime row (secrets, the routes last installed). A process listed there
that is alive and is the Stratum process it should be (its command line names the module
and the port, so a recycled pid is not taken for it) is taken over as it is: the same
process keeps serving, probes carry on from the state it was observed in. Whatever is gone
is started again by the reconcile loop as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratum.control.procs import Proc, Process
from stratum.control.state import DeploymentState, Gateway, Replica
from stratum.store.runtime import Runtime


@dataclass
class Adopted:
    replicas: dict[str, Process] = field(default_factory=dict)  # by replica id
    gateways: dict[int, Proc] = field(default_factory=dict)  # by slot


def runs(pid: int, module: str, port: int) -> bool:
    """Whether process ``pid`` is ``python ... -m module ... --port port`` (and alive)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False
    try:
        return argv[argv.index("-m") + 1] == module and \
            argv[argv.index("--port") + 1] == str(port)
    except (ValueError, IndexError):
        return False


# A replica's process from its observed document, where its placement finds it alive:
# (deployment, replica id, document, log) → the process, or None (``Placement.adopt``).
FindReplica = Callable[[str, str, dict[str, Any], Path], "Process | None"]


def local_replica(group: str, rid: str, doc: dict[str, Any], log: Path) -> Process | None:
    pid, port = int(doc["pid"]), int(doc["port"])
    return Proc(pid, None, log) if runs(pid, "stratum.serve", port) else None


def adopt(st: DeploymentState, observed: dict[str, Any], runtime: Runtime | None,
          logs: Path, now: float, find: FindReplica = local_replica) -> Adopted:
    """Fill ``st`` with the live processes of ``observed``; returns them to supervise."""
    out = Adopted()
    routes = (runtime.routes or {}) if runtime else {}
    secrets: dict[str, str] = routes.get("secrets") or {}
    for doc in observed.get("replicas") or []:
        pid, port, rid = int(doc["pid"]), int(doc["port"]), str(doc["id"])
        proc = find(st.name, rid, doc, logs / st.name / f"{rid}.log")
        if proc is None:
            continue
        scheme = str(doc.get("url", "http://")).split(":", 1)[0]
        host = str(doc.get("host", "127.0.0.1"))
        url = f"{scheme}://{host}:{port}"
        # A replica in the routes has its secret there; one still starting is of the
        # current generation.
        r = Replica(rid, int(doc["version"]), port, pid, now,
                    state="ready" if doc.get("state") == "ready" else "starting",
                    healthy=bool(doc.get("healthy")), secret=secrets.get(url, st.secret),
                    scheme=scheme, host=host)
        st.replicas[rid] = r
        out.replicas[rid] = proc
        st.seq = max(st.seq, _seq(rid))
    scheme = str((observed.get("gateway") or {}).get("url", "http://")).split(":", 1)[0]
    for doc in observed.get("gateways") or []:
        pid, port, slot = int(doc["pid"]), int(doc["port"]), int(doc["slot"])
        if not runs(pid, "stratum.gateway", port):
            continue
        # It holds the routes last installed (it reads them from the store too).
        st.gateways[slot] = Gateway(slot, pid, port, int(doc["admin_port"]),
                                    live=bool(doc.get("live")),
                                    pushed={st.name: runtime.etag}
                                    if runtime and runtime.etag else {},
                                    scheme=scheme)
        out.gateways[slot] = Proc(pid, None, logs / st.name / f"gateway-{slot}.log")
    if out.gateways:
        st.traffic = list(observed.get("traffic") or [])
    return out


def _seq(replica_id: str) -> int:
    try:
        return int(replica_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


__all__ = ["Adopted", "FindReplica", "adopt", "local_replica", "runs"]
