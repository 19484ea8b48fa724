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
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load

from stratum.config import Settings, load_settings
from stratum.errors import ConfigError, NotFoundError
from stratum.store import Lineage, ModelSpec, Store, register_model
from stratum.store import models as m
from stratum.train import sklearn as skl
from stratum.train.components import build_loss, build_network, dry_run, num_outputs
from stratum.train.config import TrainConfig, load_config
from stratum.train.launcher import LocalLauncher, run_dir
from stratum.train.loop import Job, Progress, evaluate, train
from stratum.train.metrics import make_meter, metric_names
from stratum.train.strategies import Single, WorkerEnv, check_strategy, is_distributed
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
        return _fit(cfg, settings, store, progress, resume)
    finally:
        if own_store:
            store.close()


def _fit(cfg: TrainConfig, settings: Settings, store: Store, progress: ProgressFn | None,
         resume: bool | str) -> m.ModelVersion:
    from stratum.data import open_dataset

    strategy = check_strategy(cfg.resolved_strategy())
    if cfg.workers > 1 and not is_distributed(strategy):
        raise ConfigError(f"strategy {strategy!r} runs one worker but workers is {cfg.workers}",
                          hint="set workers: 1 or strategy: ddp")
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
    framework = _framework(cfg)
    if framework == "sklearn" and (cfg.workers > 1 or is_distributed(strategy)):
        raise ConfigError("scikit-learn models train in one process; set workers: 1")
    parent = _parent(store, cfg)
    outputs = num_outputs(ds.task, ds.classes)
    if framework == "torch":  # fail now, not after spawning workers
        torch.manual_seed(cfg.seed)
        net = build_network(cfg, ds.input_shape, outputs)
        x0, _ = ds.load("train", worker=0, world=cfg.workers)
        if len(x0) == 0:
            raise ConfigError(f"dataset {cfg.dataset} has no training rows for worker 0")
        dry_run(net, x0, outputs, cfg.model.name)
        build_loss(cfg, ds.task)

    run_id = _resume_run(store, cfg, resume) if resume else None
    run = store.meta.start_run(
        cfg.model_name, strategy=strategy if framework == "torch" else "sklearn",
        config=cfg.model_dump(mode="json"), dataset_version_id=ds.row.id, run_id=run_id)
    try:
        t0 = time.perf_counter()
        if framework == "sklearn":
            blob, test, summary = _fit_sklearn(cfg, store, ds)
            weights: dict[str, torch.Tensor] | None = None
        else:
            job = Job(config=cfg, run_id=run.id, dataset=f"{ds.name}@{ds.version}",
                      init_weights=parent.artifact_path + "/weights.safetensors"
                      if parent else None)
            weights, summary = _train_torch(job, settings, store, progress)
            test = _test_torch(cfg, ds, weights, outputs)
            blob = None
        summary["wall_s"] = time.perf_counter() - t0
        test = {k: v for k, v in test.items() if k in names or k == "loss"}
        summary["test"] = test
        spec = ModelSpec(
            framework="sklearn" if framework == "sklearn" else "torch",
            architecture=cfg.model.name, params=cfg.model.params, task=ds.task,
            input_shape=list(ds.input_shape), feature_names=list(ds.feature_names),
            classes=ds.classes, weights_file=skl.WEIGHTS_FILE if blob else "weights.safetensors",
            metrics=test,
            lineage=Lineage(
                dataset=ds.name, dataset_version=ds.version,
                parent_version=parent.version if parent else None, run_id=run.id,
                config_hash=cfg.config_hash(), git_commit=_git_commit(),
                extra={"strategy": strategy, "workers": cfg.workers,
                       "global_step": summary.get("global_step"),
                       "restarts": len(summary.get("restarts", []))}),
        )
        mv = register_model(
            store.meta, store.artifacts, cfg.model_name, spec, weights=weights,
            weights_blob=blob, preprocessing=ds.pipeline.to_artifacts(), run_id=run.id,
            parent_id=parent.id if parent else None, dataset_version_id=ds.row.id,
            aliases=("candidate",))
        store.meta.log_metrics(run.id, {f"test_{k}": v for k, v in test.items()},
                               step=int(summary.get("global_step", 0)))
        store.meta.finish_run(run.id, "completed", summary={**summary, "version": mv.version})
        return mv
    except KeyboardInterrupt:
        store.meta.finish_run(run.id, "stopped", error="interrupted; continue with --resume")
        raise
    except BaseException as exc:
        store.meta.finish_run(run.id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _train_torch(job: Job, settings: Settings, store: Store,
                 progress: ProgressFn | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    cfg = job.config
    if not is_distributed(cfg.resolved_strategy()):
        shards = load_shards(store, job.dataset)
        threads = torch.get_num_threads()
        if cfg.threads:  # this process is the caller's: give its thread count back after
            torch.set_num_threads(cfg.threads)
        try:
            result = train(job, Single(WorkerEnv()), shards, store.artifacts,
                           metrics_sink=store.meta, report=progress)
        finally:
            torch.set_num_threads(threads)
        return result.state_dict, {
            "global_step": result.global_step, "history": result.history,
            "resumed_from": result.resumed_from, "samples_per_s": result.samples_per_s,
            "checkpoint_seconds": result.checkpoint_seconds,
           "checkpoint_write_seconds": result.checkpoint_write_seconds, "restarts": []}
    launcher = LocalLauncher(settings, run_dir(settings, job.run_id), cfg.workers,
                             on_progress=progress)
    report = launcher.run(job)
    base = final_prefix(job.run_id)
    weights = st_load(store.artifacts.get_bytes(f"{base}/weights.safetensors"))
    summary = json.loads(store.artifacts.get_bytes(f"{base}/result.json"))
    summary["restarts"] = [vars(r) for r in report.restarts]
    summary["launch_wall_s"] = report.wall_s
    return weights, summary


def _test_torch(cfg: TrainConfig, ds: Any, weights: dict[str, torch.Tensor],
                outputs: int) -> dict[str, float]:
    x, y = ds.load("test")
    net = build_network(cfg, ds.input_shape, outputs)
    net.load_state_dict(weights)
    single = Single(WorkerEnv())
    return evaluate(single.prepare(net), x, y, build_loss(cfg, ds.task), ds.task, outputs,
                    single)


def _fit_sklearn(cfg: TrainConfig, store: Store,
                 ds: Any) -> tuple[bytes, dict[str, float], dict[str, Any]]:
    est = skl.build_estimator(cfg.model.name, ds.task, cfg.model.params, cfg.seed)
    x, y = ds.load("train")
    t0 = time.perf_counter()
    skl.fit_estimator(est, x, y)
    fit_s = time.perf_counter() - t0
    xt, yt = ds.load("test")
    outputs = num_outputs(ds.task, ds.classes)
    meter = make_meter(ds.task, outputs)
    meter.update(torch.from_numpy(skl.predict_outputs(est, xt, ds.task, outputs)),
                 torch.from_numpy(yt))
    return skl.dumps(est), meter.compute(), {"fit_s": fit_s, "samples": len(x)}


def _framework(cfg: TrainConfig) -> str:
    fw = cfg.model.framework
    if fw != "auto":
        return fw
    return "sklearn" if cfg.model.name in skl.SKLEARN_MODELS else "torch"


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
    for run in store.meta.runs(cfg.model_name):
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

