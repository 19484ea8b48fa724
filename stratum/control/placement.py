"""Where a replica process runs: the supervisor's one seam between deciding to start a
replica and the process that serves, with two implementations chosen by a deployment's
``backend`` (``cluster.backend`` when it was deployed): ``LocalPlacement``, a child
process of the control plane on 127.0.0.1, and ``RayPlacement`` (``ray_placement``), a
process on a node of a Ray cluster, hosted by an actor there and bound to the node's
address. Either way it is the same ``python -P -m stratum.serve`` command line; the
gateway reaches it over HTTP at the address the placement reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stratum.config import Settings
from stratum.control import procs
from stratum.control.adopt import local_replica
from stratum.control.procs import Process, Spawn
from stratum.control.spec import DeploymentSpec
from stratum.errors import ConflictError

LOCAL_HOST = "127.0.0.1"  # where a local replica serves (it binds serve.host)


@dataclass(frozen=True)
class Job:
    """One replica to start: ``python -P -m MODULE ARGS`` plus the port (and, on a
    cluster, the host) chosen where it lands."""

    name: str  # the replica id
    group: str  # its deployment: replicas of one group go to different nodes when they can
    module: str
    args: list[str]
    env: dict[str, str] = field(repr=False)
    log: Path
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class Placed:
    proc: Process
    host: str
    port: int


def replica_job(deployment: str, replica_id: str, model_ref: str, env: dict[str, str],
                logs: Path, spec: DeploymentSpec) -> Job:
    """The job of replica ``replica_id`` of ``deployment``: ``stratum.serve`` of
    ``model_ref`` (NAME@VERSION), with the CPUs and GPUs its spec asks of a node."""
    return Job(replica_id, deployment, "stratum.serve",
               ["--model", model_ref, "--name", deployment, "--replica-id", replica_id],
               env, logs / deployment / f"{replica_id}.log", spec.cpus, spec.gpus)


def placed_spec(spec: DeploymentSpec, current: DeploymentSpec | None, settings: Settings,
                backend: str | None, cpus: float | None, gpus: float | None,
                ) -> DeploymentSpec:
    """``spec`` with where its replicas run and what each asks of a node: the request's
    choice, else what the deployment had, else the settings' (``cluster.backend``,
    ``cluster.replica_cpus``/``replica_gpus``). Replicas do not move between backends in
    place: that is refused."""
    def pick(asked: Any, had: Any, default: Any) -> Any:
        return asked if asked is not None else had if current is not None else default

    cfg = settings.cluster
    new = spec.model_copy(update={
        "backend": pick(backend, current and current.backend, cfg.backend),
        "cpus": pick(cpus, current and current.cpus, cfg.replica_cpus),
        "gpus": pick(gpus, current and current.gpus, cfg.replica_gpus)})
    new = DeploymentSpec.model_validate(new.model_dump())  # checks the values picked
    if current is not None and current.backend != new.backend:
        raise ConflictError(
            f"the replicas of this deployment run on {current.backend}; they do not move to "
            f"{new.backend} in place",
            hint=f"undeploy it, then deploy it again with --backend {new.backend}")
    return new


class Placement(Protocol):
    def check(self, cpus: float, gpus: float) -> None:
        """Refuse (raise) a deployment whose replicas could never be placed."""

    async def start(self, job: Job) -> Placed:
        """Start ``job``. A start that fails comes back as a process that has already
        exited, its reason as its log, so it counts as a failed start like any other."""

    def watch(self, proc: Process, wake: Callable[[], None]) -> None:
        """Call ``wake`` (on the running loop) as soon as ``proc`` is gone."""

    def adopt(self, group: str, replica_id: str, doc: dict[str, Any],
              log: Path) -> Process | None:
        """The live process a previous control plane left for replica ``replica_id`` of
        deployment ``group`` (its observed document ``doc``), or None."""


class LocalPlacement:
    def __init__(self, spawn: Spawn = procs.spawn,
                 free_port: Callable[[], int] = procs.free_port) -> None:
        self._spawn, self._free_port = spawn, free_port

    def check(self, cpus: float, gpus: float) -> None:
        return None  # this machine takes what it is given

    async def start(self, job: Job) -> Placed:
        port = self._free_port()
        return Placed(self._spawn(job.module, [*job.args, "--port", str(port)], job.env,
                                  job.log), LOCAL_HOST, port)

    def watch(self, proc: Process, wake: Callable[[], None]) -> None:
        procs.watch_exit(proc.pid, wake)

    def adopt(self, group: str, replica_id: str, doc: dict[str, Any],
              log: Path) -> Process | None:
        return local_replica(group, replica_id, doc, log)


@dataclass(eq=False)
class Failed:
    """A start that never got a process: exited at once, with ``reason`` as its log."""

    reason: str
    pid: int = 0
    returncode: int | None = None

    def alive(self) -> bool:
        return False

    def terminate(self) -> None:
        return None

    def kill(self) -> None:
        return None

    def log_tail(self, chars: int = 1500) -> str:
        return self.reason[-chars:]


__all__ = ["LOCAL_HOST", "Failed", "Job", "LocalPlacement", "Placed", "Placement",
           "placed_spec", "replica_job"]
