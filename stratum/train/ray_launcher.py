"""Training on a Ray cluster: the ``Launcher`` for ``cluster.backend: ray``.

``RayLauncher.run(job)`` runs the same worker (``worker.run_worker``: the one loop, the
same strategies, each worker reading only its own shards from the artifact store) inside
Ray Train's ``TorchTrainer``: ``ScalingConfig(num_workers=N)`` spread over the nodes,
``FailureConfig(max_failures=train.max_restarts)``. Ray Train sets RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT and the gloo (nccl on GPU) process group, exactly what a local
worker reads. Checkpoints are Stratum's, in the artifact store (Ray is told of none): when
a worker or its whole node dies, Ray restarts the group on the nodes that are left and the
loop resumes from the newest complete checkpoint, as under the local launcher.

Every strategy runs here as it does locally: ``processes(cfg)`` Ray Train workers, each
reading its role from its rank (a parameter server's servers are ranks ``W..W+S-1``; an
ensemble's processes train their members). With ``cluster.train_gpus_per_worker`` (``stratum
train --gpus-per-worker``) above 0 each worker holds that many GPUs: Ray Train sets
``CUDA_VISIBLE_DEVICES`` and the process group is ``cpu:gloo,cuda:nccl`` (CUDA tensors over
nccl, the CPU tensors of a parameter server's messages and of object collectives over
gloo); the strategy picks the device (``strategies.pick_device``). Workers that asked for no
GPU train on the CPU even on a node that has some: Ray did not give them one.

Rank 0's progress reports, and a StratumError of any rank, travel back through a small Ray
queue pinned to the driver's node (a queue on a node that dies would take the run with
it; Ray Train pins its controller there for the same reason). A new attempt is seen as a
new token in those reports; each becomes a ``Restart`` with the step it resumed from.
Progress callbacks run in the caller's thread while ``TorchTrainer.fit`` runs in another,
so a callback that raises (a pruned search trial, Ctrl-C) stops the run: the driver aborts
Ray Train's controller (what Ray's own Ctrl-C handler does) and raises it on. A worker's
StratumError aborts the run too: restarting cannot help a bad config or a NaN loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stratum import errors
from stratum.config import Settings
from stratum.errors import ConfigError, StratumError, TrainingError
from stratum.train.launcher import LaunchReport, Restart
from stratum.train.loop import Job, Progress
from stratum.train.strategies import WorkerEnv
from stratum.train.worker import run_worker

if TYPE_CHECKING:
    from stratum.cluster import NodeInfo

log = logging.getLogger(__name__)

# Ray's own bookkeeping of a run (no checkpoints: those are Stratum's, in the artifact
# store); a folder every node has.
RAY_STORAGE = Path(tempfile.gettempdir()) / "stratum-ray-train"


class RayLauncher:
    """Workers as Ray Train workers on the cluster at ``cluster.address``."""

    name = "ray"

    def __init__(self, settings: Settings, workers: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 cpus_per_worker: float = 1.0, poll_s: float = 0.1,
                 gpus_per_worker: float | None = None) -> None:
        self.settings, self.workers, self.on_progress = settings, workers, on_progress
        self.cpus_per_worker, self.poll_s = cpus_per_worker, poll_s
        self.gpus_per_worker = settings.cluster.train_gpus_per_worker \
            if gpus_per_worker is None else gpus_per_worker

    def run(self, job: Job) -> LaunchReport:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from stratum.cluster import connect_settings, require_shared_storage

        live = connect_settings(self.settings)  # a ClusterError when nothing answers there
        # Workers on other nodes read the shards and write checkpoints by URL.
        require_shared_storage(self.settings, len(live), queue=False)
        self._check_resources(live)
        if job.config.threads is None and self.settings.train.threads_per_worker is None:
            job = job.model_copy(update={"config": job.config.model_copy(
                update={"threads": max(1, int(self.cpus_per_worker))})})
        here = ray.get_runtime_context().get_node_id()
        channel = Queue(actor_options={"num_cpus": 0, "scheduling_strategy":
                                       NodeAffinitySchedulingStrategy(here, soft=False)})
        gpus = self.gpus_per_worker
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job.model_dump_json(),
                               "settings": self.settings.model_dump_json(),
                               "channel": channel, "gpus": gpus},
            # The same collective timeout as the local ddp strategy: when a peer is gone
            # the survivors fail within it instead of Ray's default half hour.
            torch_config=TorchConfig(timeout_s=120,
                                     backend="cpu:gloo,cuda:nccl" if gpus else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=self.workers, use_gpu=gpus > 0, placement_strategy="SPREAD",
                resources_per_worker={"CPU": self.cpus_per_worker,
                                      **({"GPU": gpus} if gpus else {})}),
            run_config=RunConfig(
                name=f"stratum-{job.run_id}", storage_path=str(RAY_STORAGE),
                failure_config=FailureConfig(max_failures=self.settings.train.max_restarts),
                callbacks=[_controller_handle(channel)]),
        )
        tracker = _Tracker(self.on_progress)
        failure: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as exc:  # ray.train.TrainingFailedError, Ray's own errors
                failure.append(exc)

        runner = threading.Thread(target=fit, daemon=True, name="ray-train-fit")
        report = LaunchReport(attempts=0, wall_s=0.0)
        t0 = time.perf_counter()
        runner.start()
        try:
            self._follow(channel, tracker, runner)
        except BaseException:  # a progress callback gave up on the run (pruned, Ctrl-C)
            self._abort(channel, tracker, runner)
            raise
        finally:
            with contextlib.suppress(Exception):
                channel.shutdown(force=True)
        report.wall_s = time.perf_counter() - t0
        report.attempts, report.restarts = max(1, tracker.attempts), tracker.restarts
        if failure or tracker.errors:
            raise tracker.error() or TrainingError(
                f"training on Ray failed after {report.attempts} attempt(s): "
                f"{_first_line(failure[0]) if failure else 'no result'}",
                hint="see the worker logs in the Ray dashboard; raise train.max_restarts if "
                     "workers died") from (failure[0] if failure else None)
        return report

    def _check_resources(self, live: list[NodeInfo]) -> None:
        """Refuse what Ray would wait for forever: more CPUs or GPUs than the live nodes
        have (a worker's GPUs must all be on its own node)."""
        where = f"the Ray cluster at {self.settings.cluster.address or 'this home'}"
        cpus, wanted = sum(n.cpus for n in live), self.workers * self.cpus_per_worker
        if wanted > cpus:
            raise ConfigError(
                f"{self.workers} workers of {self.cpus_per_worker:g} CPU need {wanted:g} CPUs "
                f"and {where} has {cpus:g} on {len(live)} live node(s)",
                hint="train with fewer --workers, or add nodes to the cluster")
        gpus = self.gpus_per_worker
        if gpus <= 0:
            return
        room = sum(int(min(n.cpus // self.cpus_per_worker, n.gpus // gpus)) for n in live)
        if room < self.workers:
            have = ", ".join(f"{n.ip}: {n.gpus:g}" for n in live)
            raise ConfigError(
                f"{self.workers} workers of {gpus:g} GPU need {self.workers * gpus:g} GPUs "
                f"and {where} has room for {room} such worker(s) (GPUs per live node: {have})",
                hint="train with fewer --workers or --gpus-per-worker (0 trains on CPUs), "
                     "or add GPU nodes to the cluster")

    def _follow(self, channel: Any, tracker: _Tracker, runner: threading.Thread) -> None:
        """Hand the workers' messages to the tracker, in this thread, until ``fit`` ends;
        a worker's StratumError ends it at once."""
        while True:
            finished = not runner.is_alive()  # then one last drain
            for item in _drain(channel):
                tracker.take(item)
            if finished:
                return
            if tracker.errors:
                self._abort(channel, tracker, runner)
                return
            time.sleep(self.poll_s)

    def _abort(self, channel: Any, tracker: _Tracker, runner: threading.Thread,
               wait_s: float = 60.0) -> None:
        """Stop the run through its controller (its workers go with it); wait for ``fit``."""
        import ray

        deadline = time.monotonic() + wait_s
        while tracker.controller is None and runner.is_alive() \
                and time.monotonic() < deadline - wait_s / 2:
            for item in _drain(channel):  # the handle comes first; progress may follow
                with contextlib.suppress(Exception):
                    tracker.take(item)
            time.sleep(self.poll_s)
        if tracker.controller is not None and runner.is_alive():
            try:
                ray.get(tracker.controller.abort.remote(), timeout=wait_s / 2)
            except Exception:  # the controller exits inside the call
                log.debug("Ray Train's controller exited on abort", exc_info=True)
        runner.join(max(0.0, deadline - time.monotonic()))
        if runner.is_alive():
            log.warning("Ray Train run did not stop within %.0f s of its abort", wait_s)


def _drain(channel: Any) -> list[Any]:
    try:
        return list(channel.get_nowait_batch(channel.qsize()))
    except Exception:  # the queue's node or actor is gone: nothing more will come
        return []


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _controller_handle(channel: Any) -> Any:
    """A callback that runs in Ray Train's controller and sends the driver the controller's
    handle: the one way to abort a run from another thread (Ray's own Ctrl-C handler calls
    the same ``abort``). Made here so that importing this module does not import Ray."""
    from ray.train.v2._internal.execution.callback import ControllerCallback

    class ControllerHandle(ControllerCallback):
        def after_controller_start(self, train_run_context: Any) -> None:
            import ray

            with contextlib.suppress(Exception):
                channel.put_nowait({"controller": ray.get_runtime_context().current_actor})

    return ControllerHandle()


class _Tracker:
    """Turns the workers' messages into progress callbacks, restarts and errors."""

    def __init__(self, on_progress: Callable[[Progress], None] | None) -> None:
        self.on_progress = on_progress
        self.tokens: dict[str, int] = {}
        self.restarts: list[Restart] = []
        self.errors: list[dict[str, Any]] = []
        self.last = Progress()
        self.last_at = time.time()
        self.pending: Restart | None = None
        self.controller: Any = None  # Ray Train's controller, to abort the run

    @property
    def attempts(self) -> int:
        return len(self.tokens)

    def take(self, item: dict[str, Any]) -> None:
        if "controller" in item:
            self.controller = item["controller"]
            return
        if "error" in item:
            self.errors.append(item["error"])
            return
        p = Progress.model_validate(item["progress"])
        if item["token"] not in self.tokens:
            self.tokens[item["token"]] = len(self.tokens)
            if len(self.tokens) > 1:  # a new attempt: the previous one died
                self.pending = Restart(attempt=len(self.tokens) - 2, rank=None, pid=None,
                                       returncode=None, died_at=self.last_at,
                                       last_step=self.last.step)
                self.restarts.append(self.pending)
                self._emit(Progress(attempt=len(self.tokens) - 1, phase="restarting",
                                    step=self.last.step))
        p.attempt = self.tokens[item["token"]]
        if self.pending is not None and p.attempt == len(self.tokens) - 1 \
                and p.phase == "train" and p.step > (p.resumed_from or 0):
            self.pending.resumed_from = p.resumed_from
            self.pending.recover_s = time.time() - self.pending.died_at
            self.pending = None
        self.last, self.last_at = p, time.time()
        self._emit(p)

    def _emit(self, p: Progress) -> None:
        if self.on_progress is not None:
            self.on_progress(p)

    def error(self) -> StratumError | None:
        """The first StratumError a worker raised, as the same class (restarting could not
        help it: a bad config, a NaN loss)."""
        if not self.errors:
            return None
        doc = self.errors[0]
        cls = getattr(errors, doc.get("type", ""), TrainingError)
        if not (isinstance(cls, type) and issubclass(cls, StratumError)):
            cls = TrainingError
        return cls(doc["message"], hint=doc.get("hint"))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the local worker's body, with its settings and job
    from the driver and its place in the group from Ray Train's variables."""
    job = Job.model_validate_json(config["job"])
    settings = Settings.model_validate_json(config["settings"])
    # A node-local home: the driver's folder may not exist on this node (the stores are
    # reached by URL; the home only holds the artifact cache here).
    settings = settings.model_copy(update={"home": RAY_STORAGE / "home"})
    if not config.get("gpus"):
        # Ray gave this worker no GPU but leaves CUDA_VISIBLE_DEVICES alone then (unless
        # RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO): hide the node's GPUs, or the strategy would
        # take one Ray did not grant. Nothing has touched CUDA in this process yet.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    channel, token, env = config["channel"], uuid.uuid4().hex, WorkerEnv.from_env()

    def report(p: Progress) -> None:
        with contextlib.suppress(Exception):  # progress is best effort: never stall a step
            channel.put_nowait({"token": token, "progress": p.model_dump()})

    try:
        run_worker(job, settings, env, report)
    except StratumError as exc:
        with contextlib.suppress(Exception):
            channel.put_nowait({"error": {"type": type(exc).__name__, "message": exc.message,
                                          "hint": exc.hint, "rank": env.rank}})
        raise


__all__ = ["RayLauncher", "train_loop_per_worker"]
