"""Training on a Ray cluster: the ``Launcher`` for ``cluster.backend: ray``.

``RayLauncher.run(job)`` runs the same worker (``worker.run_worker``: the one loop, the
same strategies, each worker reading only its own shards from the artifact store) inside
Ray Train's ``TorchTrainer``: ``ScalingConfig(num_workers=N)`` spread over the nodes,
``FailureConfig(max_failures=train.max_restarts)``. Ray Train sets RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT and the gloo (nccl on GPU) process group, exactly what a local
worker reads. Checkpoints are Stratum's, in the artifact store (Ray is told of none): when
a worker or its whole node dies, Ray restarts the group on the nodes that are left and the
loop resumes from the newest complete checkpoint, as under the local launcher.

Rank 0's progress reports, and a StratumError of any rank, travel back through a small Ray
queue pinned to the driver's node (a queue on a node that dies would take the run with
it; Ray Train pins its controller there for the same reason). A new attempt is seen as a
new token in those reports; each becomes a ``Restart`` with the step it resumed from.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stratum import errors
from stratum.config import Settings
from stratum.errors import ConfigError, StratumError, TrainingError
from stratum.train.launcher import LaunchReport, Restart
from stratum.train.loop import Job, Progress
from stratum.train.strategies import WorkerEnv
from stratum.train.worker import run_worker

log = logging.getLogger(__name__)

# Ray's own bookkeeping of a run (no checkpoints: those are Stratum's, in the artifact
# store); a folder every node has.
RAY_STORAGE = Path(tempfile.gettempdir()) / "stratum-ray-train"


class RayLauncher:
    """Workers as Ray Train workers on the cluster at ``cluster.address``."""

    name = "ray"

    def __init__(self, settings: Settings, workers: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 cpus_per_worker: float = 1.0, poll_s: float = 0.1) -> None:
        self.settings, self.workers, self.on_progress = settings, workers, on_progress
        self.cpus_per_worker, self.poll_s = cpus_per_worker, poll_s

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
        cpus, wanted = sum(n.cpus for n in live), self.workers * self.cpus_per_worker
        if wanted > cpus:  # Ray would wait for resources that never come
            raise ConfigError(
                f"{self.workers} workers of {self.cpus_per_worker:g} CPU need {wanted:g} CPUs "
                f"and the Ray cluster at {self.settings.cluster.address or 'this home'} has "
                f"{cpus:g} on {len(live)} live node(s)",
                hint="train with fewer --workers, or add nodes to the cluster")
        if job.config.threads is None and self.settings.train.threads_per_worker is None:
            job = job.model_copy(update={"config": job.config.model_copy(
                update={"threads": max(1, int(self.cpus_per_worker))})})
        here = ray.get_runtime_context().get_node_id()
        channel = Queue(actor_options={"num_cpus": 0, "scheduling_strategy":
                                       NodeAffinitySchedulingStrategy(here, soft=False)})
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job.model_dump_json(),
                               "settings": self.settings.model_dump_json(),
                               "channel": channel},
            # The same collective timeout as the local ddp strategy: when a peer is gone
            # the survivors fail within it instead of Ray's default half hour.
            torch_config=TorchConfig(timeout_s=120),
            scaling_config=ScalingConfig(
                num_workers=self.workers, use_gpu=False, placement_strategy="SPREAD",
                resources_per_worker={"CPU": self.cpus_per_worker}),
            run_config=RunConfig(
                name=f"stratum-{job.run_id}", storage_path=str(RAY_STORAGE),
                failure_config=FailureConfig(max_failures=self.settings.train.max_restarts)),
        )
        tracker = _Tracker(self.on_progress)
        stop = threading.Event()
        pump = threading.Thread(target=self._pump, args=(channel, tracker, stop),
                                daemon=True, name="ray-train-progress")
        report = LaunchReport(attempts=0, wall_s=0.0)
        t0 = time.perf_counter()
        pump.start()
        try:
            trainer.fit()
            failure: BaseException | None = None
        except Exception as exc:  # ray.train.TrainingFailedError and Ray's own errors
            failure = exc
        finally:
            stop.set()
            pump.join()
            with contextlib.suppress(Exception):
                channel.shutdown(force=True)
        report.wall_s = time.perf_counter() - t0
        report.attempts, report.restarts = max(1, tracker.attempts), tracker.restarts
        if failure is not None:
            raise tracker.error() or TrainingError(
                f"training on Ray failed after {report.attempts} attempt(s): "
                f"{str(failure).splitlines()[0] if str(failure) else type(failure).__name__}",
                hint="see the worker logs in the Ray dashboard; raise train.max_restarts if "
                     "workers died") from failure
        return report

    def _pump(self, channel: Any, tracker: _Tracker, stop: threading.Event) -> None:
        while True:
            done = stop.is_set()  # one last drain after fit() returned
            try:
                items = channel.get_nowait_batch(channel.qsize())
            except Exception:  # the queue's node or actor is gone: nothing more will come
                items = []
            for item in items:
                tracker.take(item)
            if done:
                return
            time.sleep(self.poll_s)


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

    @property
    def attempts(self) -> int:
        return len(self.tokens)

    def take(self, item: dict[str, Any]) -> None:
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
