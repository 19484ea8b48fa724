"""Replicas placed on a Ray cluster: one detached actor per replica (``stratum.cluster.
hosted``) asking its node for the deployment's CPUs and GPUs and running the replica bound
to the node's address.

Spreading: each replica goes to the live node with the fewest replicas of its deployment
(then the fewest of ours, then free room), asked of Ray as a soft node affinity that
spills, so Ray places it elsewhere when that node has no room free now. A node where one of
our actors was just lost is avoided until the GCS has made up its mind about it (it takes
the GCS seconds to declare a node dead; the actor's loss is known in about one).

Losing a replica: the actor's ``wait`` call fails when its process, its actor or its node
dies; ``RayProc.alive`` then reports it gone (and kills what may be left of the actor, so a
merely unreachable one cannot come back beside its replacement), and the supervisor
replaces it as it does a local crash. Actors are detached and named after the home and the
replica, so a control plane that takes over finds them (``adopt``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stratum.cluster import NAMESPACE, NodeInfo, connect_settings, require_shared_storage
from stratum.cluster.hosted import actor_class
from stratum.config import Settings
from stratum.control import procs
from stratum.control.placement import Failed, Job, Placed
from stratum.control.procs import Process
from stratum.errors import ConfigError, StratumError

log = logging.getLogger(__name__)
SUSPECT_S = 30.0  # how long a node where an actor was lost is avoided
NODES_TTL_S = 1.0  # how long the GCS's node list is reused


class RayProc:
    """A replica process hosted by a Ray actor, as the supervisor's ``Process``."""

    def __init__(self, actor: Any, info: dict[str, Any],
                 ended: Callable[[bool], None]) -> None:
        self.actor, self.info, self._ended = actor, info, ended
        self._waiter = actor.wait.remote()
        self._done = False
        self._code: int | None = None
        self._tail = ""

    @property
    def pid(self) -> int:  # on its node, which may be another machine
        return int(self.info["pid"])

    @property
    def returncode(self) -> int | None:
        return self._code

    def alive(self) -> bool:
        import ray
        from ray.exceptions import RayError

        if self._done:
            return False
        ready, _ = ray.wait([self._waiter], timeout=0)
        if not ready:
            return True
        try:
            out = ray.get(self._waiter, timeout=5)
            self._code, self._tail = out["code"], out["log"]
            self._ended(False)
        except RayError as exc:
            self._tail = (f"lost with its Ray actor on node {self.info['ip']} (the node or "
                          f"the actor died: {type(exc).__name__})")
            self._ended(True)
        self._done = True
        self.kill()  # detached: it would hold its node's CPUs; unreachable: it stays gone
        return False

    def terminate(self) -> None:
        self.actor.signal.remote(int(signal.SIGTERM))

    def kill(self) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=True)  # its process dies with it (PDEATHSIG)
        except Exception:  # already gone
            pass

    def log_tail(self, chars: int = 1500) -> str:
        return self._tail[-chars:]

    def watch(self, wake: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self._waiter.future().add_done_callback(lambda _: loop.call_soon_threadsafe(wake))


class RayPlacement:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:10]
        self.namespace = f"{NAMESPACE}-{digest}"  # one home's actors apart from another's
        self._lock = threading.Lock()
        self._nodes: list[NodeInfo] = []
        self._nodes_at = -NODES_TTL_S
        self._placed: dict[str, tuple[str, str, float, float]] = {}  # name → group, node…
        self._suspect: dict[str, float] = {}  # node id → when we lost an actor there

    def _live(self) -> list[NodeInfo]:
        """The live nodes (connecting first), after checking the storage suits them."""
        with self._lock:
            if time.monotonic() - self._nodes_at > NODES_TTL_S:
                self._nodes = connect_settings(self.settings)
                self._nodes_at = time.monotonic()
                require_shared_storage(self.settings, len(self._nodes))
            return self._nodes

    def check(self, cpus: float, gpus: float) -> None:
        live = self._live()
        if not any(n.cpus >= cpus and n.gpus >= gpus for n in live):
            sizes = ", ".join(f"{n.ip}: {n.cpus:g} CPUs {n.gpus:g} GPUs" for n in live)
            raise ConfigError(
                f"a replica asking for {cpus:g} CPUs and {gpus:g} GPUs fits on no node of "
                f"the Ray cluster ({sizes})",
                hint="ask for less (`deploy --cpus/--gpus`, cluster.replica_cpus) or add "
                     "larger nodes")

    async def start(self, job: Job) -> Placed:
        import ray
        from ray.exceptions import RayError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        try:
            live = await asyncio.to_thread(self._live)
        except StratumError as exc:
            return Placed(Failed(f"not placed on the Ray cluster: {exc}"), "", 0)
        name = self._actor_name(job.name)
        await asyncio.to_thread(self._kill_stale, name)
        node = self._choose(live, job)
        # Counted where it is asked to go at once: the replicas started beside it (the same
        # tick) spread from it.
        self._placed[job.name] = (job.group, node.node_id if node else "", job.cpus, job.gpus)
        options: dict[str, Any] = dict(
            name=name, namespace=self.namespace, lifetime="detached", max_restarts=0,
            num_cpus=job.cpus, num_gpus=job.gpus,
            # Spill: a merely soft affinity waits for room on a node that is full now
            # (its replica stopping elsewhere would never free it).
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                node.node_id, soft=True, _spill_on_unavailable=True) if node else "SPREAD")
        actor = None
        wait_s = self.settings.cluster.connect_timeout_s * 3
        try:
            actor = actor_class().options(**options).remote()
            info = await asyncio.wait_for(
                actor.start.remote(job.module, job.args, job.env, str(job.log)), wait_s)
        except (TimeoutError, RayError, ValueError) as exc:
            self._placed.pop(job.name, None)
            if actor is not None:
                ray.kill(actor, no_restart=True)
            where = f" (asked of node {node.ip})" if node else ""
            # A timeout's text is empty; most often Ray found no node with the room free.
            why = (f"not started within {wait_s:g} s; no live node may have {job.cpus:g} "
                   f"CPUs and {job.gpus:g} GPUs free (see `stratum cluster status`)"
                   if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}")
            return Placed(Failed(f"Ray could not start the replica{where}: {why}"[:1000]),
                          "", 0)
        return Placed(self._track(job.group, job.name, actor, info, job.cpus),
                      str(info["ip"]), int(info["port"]))

    def watch(self, proc: Process, wake: Callable[[], None]) -> None:
        if isinstance(proc, RayProc):
            proc.watch(wake)
        else:  # a process of this machine (a gateway)
            procs.watch_exit(proc.pid, wake)

    def adopt(self, group: str, replica_id: str, doc: dict[str, Any],
              logfile: Path) -> Process | None:
        import ray

        try:
            live = self._live()
            actor = ray.get_actor(self._actor_name(replica_id), namespace=self.namespace)
        except (StratumError, ValueError) as exc:
            log.warning("replica %s not adopted from the Ray cluster: %s", replica_id, exc)
            return None
        ip = str(doc.get("host", ""))
        node = next((n.node_id for n in live if n.ip == ip), "")
        info = {"pid": doc["pid"], "ip": ip, "port": doc["port"], "node_id": node}
        return self._track(group, replica_id, actor, info, float(doc.get("cpus", 1.0)))

    # -- where ------------------------------------------------------------------------------
    def _choose(self, live: list[NodeInfo], job: Job) -> NodeInfo | None:
        now = time.monotonic()
        fits = [n for n in live if n.cpus >= job.cpus and n.gpus >= job.gpus
                and now - self._suspect.get(n.node_id, -SUSPECT_S) >= SUSPECT_S]
        mine = Counter(node for g, node, _, _ in self._placed.values() if g == job.group)
        ours = Counter(node for _, node, _, _ in self._placed.values())
        used = Counter[str]()
        for _, node, cpus, _ in self._placed.values():
            used[node] += int(cpus * 1000)
        roomy = [n for n in fits if n.cpus * 1000 - used[n.node_id] >= job.cpus * 1000]
        pool = roomy or fits
        if not pool:
            return None
        return min(pool, key=lambda n: (mine[n.node_id], ours[n.node_id], n.ip))

    def _track(self, group: str, name: str, actor: Any, info: dict[str, Any],
               cpus: float) -> RayProc:
        node = str(info["node_id"])
        self._placed[name] = (group, node, cpus, 0.0)

        def ended(lost: bool) -> None:
            self._placed.pop(name, None)
            if lost and node:
                self._suspect[node] = time.monotonic()
                self._nodes_at = -NODES_TTL_S  # ask the GCS again before placing more

        return RayProc(actor, info, ended)

    def _actor_name(self, replica_id: str) -> str:
        return f"replica:{replica_id}"

    def _kill_stale(self, name: str) -> None:
        """An actor of that name left by a control plane that died without adopting it."""
        import ray

        try:
            ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
        except ValueError:
            return
        log.warning("killed a stale replica actor %s", name)
        time.sleep(0.5)  # Ray frees the name asynchronously


__all__ = ["RayPlacement", "RayProc"]
