"""A local multi-node Ray cluster on one machine, for development and tests.

Each node is one ``ray start --block`` process of our own (``python -P -m
ray.scripts.scripts start …`` in ``/``, in its own session so it outlives the command that
started it): the head on ``127.0.0.2`` and each worker node on the next loopback address
(``127.0.0.3``, ``127.0.0.4``…; Linux routes all of 127.0.0.0/8 to the loopback
interface). Not ``127.0.0.1``: Ray rewrites that address to the machine's own network
address, and the nodes would no longer be told apart. A node's raylet, agents and
workers are children of its ``ray start`` process, which kills them when it is sent
SIGTERM, so stopping a node is one signal; ``stop`` still SIGKILLs whatever of the node's
process tree outlives the grace period.

Every port is picked free (the GCS never takes Redis's 6379), and the cluster's Ray
temp folder is its own short path under the system temp folder (Unix socket paths are
limited to about 100 bytes), so two clusters on one machine do not meet. What was started
is written to ``{home}/cluster.json``: ``read`` finds it for ``status``/``down`` and for
the tests that kill one node hard (``LocalCluster.node_pids``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from stratum.cluster.procfs import alive, descendants, kill_all, processes_mentioning
from stratum.config.child import start_python
from stratum.errors import ClusterError, ConflictError

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth-token"  # 0600, in this user's 0700 folder beside the clusters' records
FIRST_IP = 2  # 127.0.0.2: see the module docstring for why not 127.0.0.1
# Ray's smallest object store is 75 MB; replicas and training move little through it.
OBJECT_STORE_BYTES = 100 * 1024 * 1024


class LocalNode(BaseModel):
    ip: str
    pid: int  # the node's ``ray start --block`` process
    head: bool
    cpus: int
    gpus: int
    log: str


class LocalCluster(BaseModel):
    """A local cluster as recorded in ``{home}/cluster.json``."""

    address: str  # the head's GCS, HOST:PORT: what ``cluster.address`` / ``connect`` take
    temp_dir: str
    auth_token_file: str  # Ray's token authentication: every node and driver sends it
    nodes: list[LocalNode]
    started: float

    @property
    def head_ip(self) -> str:
        return self.address.rsplit(":", 1)[0]

    def node(self, ip: str) -> LocalNode:
        for n in self.nodes:
            if n.ip == ip:
                return n
        raise ClusterError(f"no node {ip} in the local cluster at {self.address}",
                           hint="nodes: " + ", ".join(n.ip for n in self.nodes))

    def node_pids(self, ip: str) -> list[int]:
        """Every process of node ``ip``: its ``ray start`` process and what runs under it
        (raylet, agents, Ray workers, the replicas those host). SIGKILLing all of them is
        what a machine's sudden death looks like to the rest of the cluster."""
        pid = self.node(ip).pid
        return [pid, *descendants(pid)] if alive(pid) else []

    def kill_node(self, ip: str) -> list[int]:
        """SIGKILL node ``ip`` (never the head: the GCS lives there); the pids killed."""
        if self.node(ip).head:
            raise ConflictError(f"{ip} is the head node; killing it ends the cluster",
                                hint="kill a worker node, or `stratum cluster down`")
        pids = self.node_pids(ip)
        kill_all(pids)
        end = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < end:
            time.sleep(0.05)  # SIGKILL is delivered, not waited for
        return pids


def state_path(home: Path) -> Path:
    return home.expanduser().resolve() / STATE_FILE


def read(home: Path) -> LocalCluster | None:
    """The local cluster recorded for ``home``, or None when none was started."""
    try:
        return LocalCluster.model_validate_json(state_path(home).read_text())
    except (OSError, ValueError):
        return None


def start(home: Path, nodes: int = 3, *, cpus_per_node: int = 2,
          gpus_per_node: int = 0, timeout_s: float = 120.0,
          progress: Callable[[str], None] | None = None) -> LocalCluster:
    """Start a head and ``nodes - 1`` worker nodes; returns the recorded cluster once every
    node is up (registered with the GCS). Refuses when one already runs for ``home``."""
    if nodes < 1:
        raise ClusterError(f"a cluster needs at least one node, not {nodes}")
    home = home.expanduser().resolve()
    current = read(home)
    if current is not None and any(alive(n.pid) for n in current.nodes):
        raise ConflictError(f"a local cluster already runs for {home} at {current.address}",
                            hint="`stratum cluster down` stops it")
    logs = home / "logs" / "cluster"
    logs.mkdir(parents=True, exist_ok=True)
    temp_dir = _temp_dir(home)
    ips = [f"127.0.0.{FIRST_IP + i}" for i in range(nodes)]
    port = _free_port(ips[0])
    token = _token()
    cluster = LocalCluster(address=f"{ips[0]}:{port}", temp_dir=temp_dir,
                           auth_token_file=str(token), nodes=[], started=time.time())
    deadline = time.monotonic() + timeout_s
    try:
        for i, ip in enumerate(ips):
            if progress:
                progress(f"starting {'head' if i == 0 else 'worker'} node {ip}")
            node = _start_node(cluster, ip, i == 0, cpus_per_node, gpus_per_node, logs)
            cluster.nodes.append(node)
            _write(home, cluster)  # recorded at once: `down` finds a half-started cluster
            _wait_started(node, deadline)
        if progress:
            progress("waiting for every node to register")
        _wait_registered(cluster, deadline)
    except BaseException:
        stop(home)
        raise
    return cluster


def stop(home: Path, grace_s: float = 15.0) -> list[int]:
    """Stop every process of the local cluster of ``home`` (worker nodes first, then the
    head) and forget it; the pids it had (none when nothing ran)."""
    cluster = read(home)
    if cluster is None:
        return []
    pids: list[int] = []
    for node in sorted(cluster.nodes, key=lambda n: n.head):
        pids += cluster.node_pids(node.ip)
    # A process of ours that lost its parent (a node killed hard) still names the folder.
    pids += [p for p in processes_mentioning(cluster.temp_dir) if p not in pids]
    for node in sorted(cluster.nodes, key=lambda n: n.head):
        if alive(node.pid):
            os.kill(node.pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    kill_all([p for p in pids if alive(p)])
    # SIGKILL is not instant: a worker with a CUDA context takes seconds to be torn down
    # (seen on an H200), and `cluster down` reads back that nothing is left.
    end = time.monotonic() + 30
    while any(alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    state_path(home).unlink(missing_ok=True)
    _index(cluster.address).unlink(missing_ok=True)
    return pids


def _start_node(cluster: LocalCluster, ip: str, head: bool, cpus: int, gpus: int,
                logs: Path) -> LocalNode:
    args = ["start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus),
            "--num-gpus", str(gpus), "--object-store-memory", str(OBJECT_STORE_BYTES),
            "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats",
            "--dashboard-agent-listen-port", str(_free_port(ip))]
    if head:
        port = cluster.address.rsplit(":", 1)[1]
        args += ["--head", "--port", port, "--temp-dir", cluster.temp_dir,
                 "--include-dashboard", "false", "--dashboard-host", ip,
                 "--dashboard-port", str(_free_port(ip))]
    else:
        args += ["--address", cluster.address]
    log = logs / f"node-{ip}.log"
    # Ray runs its workers at nice 15, below the raylet; on one machine that would also put
    # them, and the replicas they host, below this machine's gateways and local replicas.
    env = dict(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN_PATH=cluster.auth_token_file, RAY_worker_niceness="0")
    with open(log, "wb") as out:
        popen = start_python(
            "ray.scripts.scripts", args, env=env,
            # Nothing of ours leaks into Ray's processes (what a hosted process needs, it
            # is given), nor a token variable, which would win over the token file.
            drop=("STRATUM_", "RAY_AUTH_TOKEN"), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True)  # not ended by the terminal's Ctrl-C, nor with us
    return LocalNode(ip=ip, pid=popen.pid, head=head, cpus=cpus, gpus=gpus, log=str(log))


def _wait_started(node: LocalNode, deadline: float) -> None:
    log = Path(node.log)
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Ray runtime started" in text:
            return
        if not alive(node.pid):
            raise ClusterError(f"Ray node {node.ip} exited while starting: "
                               f"{text[-800:].strip()}", hint=f"see {log}")
        time.sleep(0.2)
    raise ClusterError(f"Ray node {node.ip} did not start in time", hint=f"see {log}")


def _wait_registered(cluster: LocalCluster, deadline: float) -> None:
    from stratum.cluster.gcs import alive_node_ips, use_token

    use_token(Path(cluster.auth_token_file))
    want = {n.ip for n in cluster.nodes}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = alive_node_ips(cluster.address, timeout_s=5.0)
        if want <= seen:
            return
        time.sleep(0.3)
    raise ClusterError(f"nodes {sorted(want - seen)} did not register with the head at "
                       f"{cluster.address} in time")


def _write(home: Path, cluster: LocalCluster) -> None:
    doc = json.dumps(cluster.model_dump(mode="json"), indent=2)
    for path in (state_path(home), _index(cluster.address)):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(doc)
        tmp.replace(path)


def by_address(address: str) -> LocalCluster | None:
    """The local cluster of this machine at ``address``, whichever home started it (what
    another home's processes need to find its token)."""
    try:
        return LocalCluster.model_validate_json(_index(address).read_text())
    except (OSError, ValueError):
        return None


def _index(address: str) -> Path:
    """This user's record of a local cluster by its address, beside the clusters' Ray
    folders (0700: the record names the cluster's token file)."""
    return Path(tempfile.gettempdir()) / f"stratum-ray-{os.getuid()}" / \
        f"{address.replace(':', '_')}.json"


def _token() -> Path:
    """This user's token for the local clusters (made once: 256 bits, as `ray
    get-auth-token --generate`). One for all of them, not one per cluster: Ray loads the
    token once per process, so a process (a test run, a control plane) that talked to one
    local cluster could not talk to the next with another."""
    path = _index("").parent / TOKEN_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with open(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def _temp_dir(home: Path) -> str:
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
    return str(Path(tempfile.gettempdir()) / f"stratum-ray-{digest}")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["STATE_FILE", "TOKEN_FILE", "LocalCluster", "LocalNode", "by_address", "read",
           "start", "state_path", "stop"]
