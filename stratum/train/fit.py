"""``stratum.train.fit(config) -> ModelVersion``: check, train, evaluate, register.

Everything that can be checked is checked before training starts (dataset, strategy,
metrics, model, one dry forward pass on a real batch). The model version is registered
only after training and the test evaluation succeeded; any failure marks the run failed
(Ctrl-C marks it stopped, for ``resume=True``) and registers nothing.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from stratum.config import Settings, load_settings
from stratum.data import open_dataset
from stratum.errors import ConfigError, NotFoundError
from stratum.models import estimators as skl
from stratum.models import num_outputs, resolve_framework
from stratum.store import Lineage, ModelSpec, Store, register_model
from stratum.store import models as m
from stratum.train.components import build_loss, build_network, dry_run
from stratum.train.config import TrainConfig, load_config
from stratum.train.ensemble import EnsemblePlan
from stratum.train.launcher import Launcher, LocalLauncher, run_dir
from stratum.train.loop import Job, Progress, evaluate, train
from stratum.train.metrics import make_meter, metric_names
from stratum.train.registry import check_workers, is_distributed, processes
from stratum.train.strategies import Single, WorkerEnv
from stratum.train.worker import final_prefix, load_shards

ProgressFn = Callable[[Progress], None]


def fit(config: TrainConfig | str | Path, settings: Settings | None = None,
        progress: ProgressFn | None = None, *, resume: bool | str = False,
        store: Store | None = None) -> m.ModelVersion:
    """Train ``config`` and register the result as a new version with alias ``candidate``.

    ``resume=True`` continues the newest unfinished run of the same model name from its
    last checkpoint (a run id picks one). Returns the registered ``ModelVersion`` row; its
    ``run_id`` leads to the run's summary (throughput, restarts, checkpoint cost).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    settings = settings or load_settings()
    own_store = store is None
    store = store or Store.open(settings)
    try:
        mv = _fit(cfg, settings, store, progress, resume)
        assert not isinstance(mv, str)
        return mv
    finally:
        if own_store:
            store.close()


def fit_candidate(cfg: TrainConfig, settings: Settings, store: Store,
                  progress: ProgressFn | None = None, *, run_id: str | None = None) -> str:
    """Train and test ``cfg`` like ``fit`` (as run ``run_id`` when given) but keep the
    result beside the run instead of registering it (a search's trial);
    ``search.register_candidate`` registers it. Returns the completed run's id."""
    return str(_fit(cfg, settings, store, progress, False, keep=True, new_run=run_id))


def _fit(cfg: TrainConfig, settings: Settings, store: Store, progress: ProgressFn | None,
         resume: bool | str, *, keep: bool = False, new_run: str | None = None
         ) -> m.ModelVersion | str:
    strategy = check_workers(cfg)
    try:
        ds = open_dataset(store, cfg.dataset)
    except NotFoundError as exc:
        raise ConfigError(f"unknown dataset {cfg.dataset!r}: {exc.message}",
                          hint="ingest it first: stratum data ingest SOURCE --name NAME") from exc
    names = metric_names(ds.task, cfg.metrics)
    es = cfg.early_stopping
    if es and es.metric not in ("val_loss", *(f"val_{n}" for n in names)):
        raise ConfigError(f"early_stopping.metric {es.metric!r} is not computed",
                          hint=f"use val_loss or one of {', '.join('val_' + n for n in names)}")
    if cfg.augment and len(ds.input_shape) != 3:
        raise ConfigError(f"augment needs images (C, H, W); {cfg.dataset} has inputs of shape "
                          f"{list(ds.input_shape)}", hint="remove augment: from the config")
    framework = resolve_framework(cfg.model.name, cfg.model.framework)
    # Fails now (bad model, shapes, loss), not after spawning workers or opening a run.
    trainer = (_EnsembleTrainer if strategy == "ensemble" else _TRAINERS[framework])(
        cfg, ds, strategy)
    parent = _parent(store, cfg)

    run_id = _resume_run(store, cfg, resume) if resume else new_run
    run = store.meta.start_run(
        cfg.model_name, strategy=trainer.strategy, config=cfg.model_dump(mode="json"),
        dataset_version_id=ds.row.id, run_id=run_id)
    try:
        t0 = time.perf_counter()
        job = Job(config=cfg, run_id=run.id, dataset=f"{ds.name}@{ds.version}",
                  init_weights=parent.artifact_path + "/weights.safetensors" if parent else None)
        out = trainer.run(job, settings, store, progress)
        summary = {**out.summary, "wall_s": time.perf_counter() - t0}
        test = {k: v for k, v in out.test.items() if k in names or k == "loss"}
        summary["test"] = test
        spec = ModelSpec(
            **{"framework": framework, "architecture": cfg.model.name,
               "params": cfg.model.params, **out.spec},
            task=ds.task, input_shape=list(ds.input_shape), feature_names=list(ds.feature_names),
            classes=ds.classes, weights_file=out.weights_file, metrics=test,
            lineage=Lineage(
                dataset=ds.name, dataset_version=ds.version,
                parent_version=parent.version if parent else None, run_id=run.id,
                config_hash=cfg.config_hash(), git_commit=_git_commit(),
                extra={"strategy": strategy, "workers": cfg.workers,
                       "backend": summary.get("backend", "local"),
                       "global_step": summary.get("global_step"),
                       "restarts": len(summary.get("restarts", [])),
                       **({"members": summary["members"]} if "members" in summary else {})}),
        )
        store.meta.log_metrics(run.id, {f"test_{k}": v for k, v in test.items()},
                               step=int(summary.get("global_step", 0)))
        if keep:  # a search's trial: registered later, if it wins
            base = f"runs/{run.id}/candidate"
            store.artifacts.put_bytes(f"{base}/{spec.weights_file}", out.weights_bytes())
            store.artifacts.put_bytes(f"{base}/spec.json", spec.model_dump_json().encode())
            store.meta.finish_run(run.id, "completed", summary=summary)
            return run.id
        mv = register_model(
            store.meta, store.artifacts, cfg.model_name, spec, weights=out.weights,
            weights_blob=out.blob, preprocessing=ds.pipeline.to_artifacts(), run_id=run.id,
            parent_id=parent.id if parent else None, dataset_version_id=ds.row.id,
            aliases=("candidate",))
        store.meta.finish_run(run.id, "completed", summary={**summary, "version": mv.version})
        return mv
    except KeyboardInterrupt:
        store.meta.finish_run(run.id, "stopped", error="interrupted; continue with --resume")
        raise
    except BaseException as exc:
        store.meta.finish_run(run.id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise


def launcher_for(settings: Settings, run_id: str, workers: int,
                 on_progress: ProgressFn | None = None) -> Launcher:
    """The launcher of ``settings.cluster.backend``: worker processes here, or Ray Train
    workers on the cluster at ``cluster.address``."""
    if settings.cluster.backend == "ray":
        from stratum.train.ray_launcher import RayLauncher  # Ray is imported only when used

        return RayLauncher(settings, workers, on_progress=on_progress)
    return LocalLauncher(settings, run_dir(settings, run_id), workers, on_progress=on_progress)


@dataclass
class _Trained:
    """What any framework's training hands back: weights (a state dict or a file's bytes),
    test metrics and the run summary."""

    test: dict[str, float]
    summary: dict[str, Any]
    weights: dict[str, torch.Tensor] | None = None
    blob: bytes | None = None
    weights_file: str = "weights.safetensors"
    spec: dict[str, Any] = field(default_factory=dict)  # framework, architecture, params

    def weights_bytes(self) -> bytes:
        if self.blob is not None:
            return self.blob
        assert self.weights is not None
        return st_save({k: v.detach().cpu().contiguous() for k, v in self.weights.items()})


class _TorchTrainer:
    """The one training loop, in process (single) or over worker processes (ddp). The
    network is built once here: checked by a dry run, trained in process, then tested."""

    def __init__(self, cfg: TrainConfig, ds: Any, strategy: str) -> None:
        self.cfg, self.ds, self.strategy = cfg, ds, strategy
        self.outputs = num_outputs(ds.task, ds.classes)
        torch.manual_seed(cfg.seed)  # the same initial weights the workers build
        self.net = build_network(cfg, ds.input_shape, self.outputs)
        x0, _ = ds.load("train", worker=0, world=cfg.workers)
        if len(x0) == 0:
            raise ConfigError(f"dataset {cfg.dataset} has no training rows for worker 0")
        dry_run(self.net, x0, self.outputs, cfg.model.name)
        self.loss = build_loss(cfg, ds.task)

    def run(self, job: Job, settings: Settings, store: Store,
            progress: ProgressFn | None) -> _Trained:
        launcher = launcher_for(settings, job.run_id, processes(self.cfg),
                                on_progress=_restarts_logged(progress, store, job.run_id))
        # On a cluster even one worker runs there; locally one worker trains in process.
        if is_distributed(self.strategy) or launcher.name != "local":
            weights, summary = self._launch(job, store, launcher)
        else:
            weights, summary = self._in_process(job, store, progress)
        self.net.load_state_dict(weights)
        x, y = self.ds.load("test")
        single = Single(WorkerEnv())
        test = evaluate(single.prepare(self.net), x, y, self.loss, self.ds.task,
                        self.outputs, single)
        return _Trained(test=test, summary=summary, weights=weights)

    def _in_process(self, job: Job, store: Store, progress: ProgressFn | None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        shards = load_shards(store, job.dataset)
        threads = torch.get_num_threads()
        if self.cfg.threads:  # this process is the caller's: give its thread count back after
            torch.set_num_threads(self.cfg.threads)
        try:
            result = train(job, Single(WorkerEnv()), shards, store.artifacts,
                           metrics_sink=store.meta, report=progress, network=self.net)
        finally:
            torch.set_num_threads(threads)
        return result.state_dict, {**result.summary(), "restarts": [], "backend": "local"}

    def _launch(self, job: Job, store: Store, launcher: Launcher
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        report = launcher.run(job)
        base = final_prefix(job.run_id)
        weights = st_load(store.artifacts.get_bytes(f"{base}/weights.safetensors"))
        summary = json.loads(store.artifacts.get_bytes(f"{base}/result.json"))
        summary["restarts"] = [vars(r) for r in report.restarts]
        summary["launch_wall_s"] = report.wall_s
        summary["backend"] = launcher.name
        return weights, summary


class _SklearnTrainer:
    """A scikit-learn estimator, fitted in this process."""

    strategy = "sklearn"

    def __init__(self, cfg: TrainConfig, ds: Any, strategy: str) -> None:
        if cfg.workers > 1 or is_distributed(strategy):
            raise ConfigError("scikit-learn models train in one process; set workers: 1")
        self.cfg, self.ds = cfg, ds

    def run(self, job: Job, settings: Settings, store: Store,
            progress: ProgressFn | None) -> _Trained:
        cfg = self.cfg
        est = skl.build_estimator(cfg.model.name, self.ds.task, cfg.model.params, cfg.seed)
        x, y = self.ds.load("train")
        t0 = time.perf_counter()
        skl.fit_estimator(est, x, y)
        fit_s = time.perf_counter() - t0
        xt, yt = self.ds.load("test")
        outputs = num_outputs(self.ds.task, self.ds.classes)
        meter = make_meter(self.ds.task, outputs)
        meter.update(torch.from_numpy(skl.predict_outputs(est, xt, self.ds.task, outputs)),
                     torch.from_numpy(yt))
        return _Trained(test=meter.compute(), summary={"fit_s": fit_s, "samples": len(x)},
                        blob=skl.dumps(est), weights_file=skl.WEIGHTS_FILE)


class _EnsembleTrainer:
    """K members in launched processes, combined into one version (``ensemble.py``)."""

    strategy = "ensemble"

    def __init__(self, cfg: TrainConfig, ds: Any, strategy: str) -> None:
        self.cfg, self.plan = cfg, EnsemblePlan(cfg, ds)  # every member builds, or fails here

    def run(self, job: Job, settings: Settings, store: Store,
            progress: ProgressFn | None) -> _Trained:
        launcher = launcher_for(settings, job.run_id, processes(self.cfg),
                                on_progress=_restarts_logged(progress, store, job.run_id))
        report = launcher.run(job)
        done = self.plan.finish(store, job.run_id)
        summary = {**done.summary, "restarts": [vars(r) for r in report.restarts],
                   "launch_wall_s": report.wall_s, "backend": launcher.name}
        return _Trained(test=done.test, summary=summary, blob=done.blob,
                        weights_file=self.plan.weights_file, spec=done.spec)


_TRAINERS: dict[str, Callable[[TrainConfig, Any, str], _TorchTrainer | _SklearnTrainer]] = {
    "torch": _TorchTrainer,
    "sklearn": _SklearnTrainer,
}


def _restarts_logged(progress: ProgressFn | None, store: Store, run_id: str) -> ProgressFn:
    """``progress``, also logging each restart of the worker group as the run's
    ``restarts`` metric when it happens (the control plane's /metrics shows it)."""
    restarts = 0

    def report(p: Progress) -> None:
        nonlocal restarts
        if p.phase == "restarting":
            restarts += 1
            store.meta.log_metrics(run_id, {"restarts": restarts}, step=p.step)
        if progress is not None:
            progress(p)

    return report


def _parent(store: Store, cfg: TrainConfig) -> m.ModelVersion | None:
    if cfg.init_from is None:
        return None
    name, _, ref = cfg.init_from.partition("@")
    try:
        return store.meta.model_version(name, ref or None)
    except NotFoundError as exc:
        raise ConfigError(f"init_from {cfg.init_from!r}: {exc.message}") from exc


def _resume_run(store: Store, cfg: TrainConfig, resume: bool | str) -> str:
    if isinstance(resume, str):
        store.meta.run(resume)  # raises NotFoundError naming the id
        return resume
    # The online learner's challengers are runs of the same model; none is resumable.
    for run in store.meta.runs(cfg.model_name, exclude_strategies=("online",)):
        if run.status in ("stopped", "failed", "running"):
            return run.id
        if run.status == "completed":
            break
    raise ConfigError(f"no stopped run of {cfg.model_name!r} to resume",
                      hint="start it without --resume")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None

