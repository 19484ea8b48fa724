"""``stratum tune``: hyper-parameter search with Optuna over the one training loop.

A search samples values for the keys of a space file into a training config, one trial
at a time, with Optuna's TPE sampler (seeded with the config's seed). Each trial is a
training run in the store (``fit_candidate``: trained, tested, its result kept beside the
run, not registered). The loop's per-epoch validation metric (``val_loss`` unless
``metric`` names another; unlike accuracy on a small split it has no ties) reaches Optuna
through the progress reports, and the pruner (``median``, or ``halving``: successive
halving) stops trials that fall behind; a pruned trial's run says ``pruned``. The first
trial is the config as given, so the search never ends worse on the validation metric
than where it started. At the end the best complete trial is registered (alias
``candidate``) with the search in its lineage.

The study lives in a journal file, ``{home}/searches/{id}.journal``: with ``parallel`` P
above 1, P child processes (``python -m stratum.train.search``) share it, each running its
share of the trials. A trial's own training may use any strategy and the Ray backend like
``stratum train``: with ``cluster.backend: ray`` (``stratum tune --backend ray``) each trial
is a Ray Train run on the cluster, the P processes its drivers, and a pruned trial's run is
aborted there (``RayLauncher``). The space file's format: ``search_space.py``.
"""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stratum.config import Settings, load_settings
from stratum.config.child import start_python
from stratum.data import open_dataset
from stratum.errors import ConfigError, StratumError
from stratum.store import ModelSpec, Store, register_model
from stratum.store import models as m
from stratum.train.config import parse_config
from stratum.train.fit import fit_candidate
from stratum.train.loop import Progress
from stratum.train.metrics import metric_names
from stratum.train.search_space import Param, as_param, get_key, set_key

PRUNERS = ("median", "halving")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ConfigError("stratum tune needs Optuna",
                          hint="pip install 'stratum[tune]'") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def searches_dir(settings: Settings) -> Path:
    return Path(settings.home).expanduser() / "searches"


def _storage(settings: Settings, search_id: str) -> Any:
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend

    path = searches_dir(settings) / f"{search_id}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_study(settings: Settings, search_id: str, worker: int = 0) -> Any:
    """The study of ``search_id`` with its sampler and pruner (Optuna keeps neither);
    ``worker`` offsets the sampler's seed so parallel processes draw different values."""
    optuna = _optuna()
    if not (searches_dir(settings) / f"{search_id}.journal").is_file():
        raise ConfigError(f"no search {search_id!r}", hint="stratum tune show lists them")
    storage = _storage(settings, search_id)
    attrs = optuna.load_study(study_name=search_id, storage=storage).user_attrs
    trials = int(attrs["trials"])
    sampler = optuna.samplers.TPESampler(
        seed=int(attrs["config"].get("seed", 0)) + worker,
        n_startup_trials=max(2, min(10, trials // 2)))
    pruner = (optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
              if attrs["pruner"] == "halving" else
              optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    return optuna.load_study(study_name=search_id, storage=storage, sampler=sampler,
                             pruner=pruner)


def _objective(study: Any, settings: Settings, store: Store) -> Callable[[Any], float]:
    optuna = _optuna()
    base, metric = study.user_attrs["config"], study.user_attrs["metric"]
    space = [Param(**{**p, "choices": tuple(p["choices"])}) for p in study.user_attrs["space"]]

    def objective(trial: Any) -> float:
        doc = copy.deepcopy(base)
        for p in space:
            set_key(doc, p.key, p.suggest(trial))
        cfg = parse_config(doc, source=f"trial {trial.number}")
        run_id = str(uuid.uuid4())
        trial.set_user_attr("run_id", run_id)
        last: dict[str, float] = {}

        def report(p: Progress) -> None:
            if p.phase == "val" and metric in p.metrics:
                last["value"] = p.metrics[metric]
                trial.report(p.metrics[metric], step=p.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"{metric} {p.metrics[metric]:.4f} at epoch "
                                             f"{p.epoch}")

        try:
            fit_candidate(cfg, settings, store, report, run_id=run_id)
        except optuna.TrialPruned as exc:
            store.meta.finish_run(run_id, "pruned", error=str(exc),
                                  summary={"search": study.study_name, "trial": trial.number})
            raise
        store.meta.finish_run(run_id, "completed",
                              summary={"search": study.study_name, "trial": trial.number})
        if "value" not in last:
            raise ConfigError(f"trial {trial.number} reported no {metric}")
        return last["value"]

    return objective


def run_trials(settings: Settings, search_id: str, trials: int, worker: int = 0,
               on_trial: Callable[[Any], None] | None = None) -> None:
    """Run ``trials`` trials of search ``search_id`` in this process."""
    study = open_study(settings, search_id, worker)
    store = Store.open(settings)
    try:
        callbacks = [] if on_trial is None else [lambda s, t: on_trial(t)]
        study.optimize(_objective(study, settings, store), n_trials=trials,
                       callbacks=callbacks, catch=(StratumError,))
    finally:
        store.close()


@dataclass
class SearchResult:
    search_id: str
    version: m.ModelVersion
    best: dict[str, Any]  # the winning trial: number, value, params, run_id
    states: dict[str, int]  # trials per state: COMPLETE, PRUNED, FAIL


def search(config: dict[str, Any], space: list[Param], settings: Settings, store: Store, *,
           trials: int, parallel: int = 1, pruner: str = "median", metric: str | None = None,
           on_trial: Callable[[Any], None] | None = None) -> SearchResult:
    """Run a search (see the module docstring) and register its best trial."""
    optuna = _optuna()
    if trials < 1 or parallel < 1:
        raise ConfigError("--trials and --parallel must be at least 1")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}", hint=f"one of {', '.join(PRUNERS)}")
    if not space:
        raise ConfigError("the search space is empty: nothing to search")
    cfg = parse_config(config)
    for p in space:  # a key the config does not have fails now, naming it
        doc = copy.deepcopy(config)
        set_key(doc, p.key, json.loads(p.choices[0]) if p.choices else
                (p.low if p.kind == "float" else int(p.low)))
        parse_config(doc, source=f"search space key {p.key}")
    task = open_dataset(store, cfg.dataset).task  # an unknown dataset fails before any trial
    metric = metric or "val_loss"  # continuous: no ties on a small validation split
    known = ["val_loss", *(f"val_{n}" for n in metric_names(task, cfg.metrics))]
    if metric not in known:
        raise ConfigError(f"--metric {metric} is not computed", hint=f"one of {', '.join(known)}")
    direction = "minimize" if metric.endswith(("loss", "mse", "mae")) else "maximize"
    search_id = f"{cfg.model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    study = optuna.create_study(study_name=search_id, storage=_storage(settings, search_id),
                                direction=direction)
    for key, value in {"config": config, "space": [vars(p) for p in space],
                       "metric": metric, "trials": trials, "parallel": parallel,
                       "pruner": pruner}.items():
        study.set_user_attr(key, value)
    given = {p.key: as_param(p, get_key(config, p.key)) for p in space}
    study.enqueue_trial({k: v for k, v in given.items() if v is not None})  # the config as is
    if parallel == 1:
        run_trials(settings, search_id, trials, on_trial=on_trial)
    else:
        _run_children(settings, search_id, trials, parallel, on_trial)
    return _register_best(open_study(settings, search_id), store)


def _run_children(settings: Settings, search_id: str, trials: int, parallel: int,
                  on_trial: Callable[[Any], None] | None) -> None:
    folder = searches_dir(settings)
    shares = [trials // parallel + (i < trials % parallel) for i in range(parallel)]
    procs: list[subprocess.Popen[bytes]] = []
    seen: set[int] = set()
    try:
        for i, n in enumerate(s for s in shares if s):
            with (folder / f"{search_id}-{i}.log").open("ab") as log:
                procs.append(start_python("stratum.train.search", [search_id, str(n), str(i)],
                                          env=settings.child_env(), stdout=log,
                                          stderr=subprocess.STDOUT))
        while True:
            done = all(p.poll() is not None for p in procs)
            if on_trial is not None:
                for t in open_study(settings, search_id).get_trials(deepcopy=False):
                    if t.state.is_finished() and t.number not in seen:
                        seen.add(t.number)
                        on_trial(t)
            if done:
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        where = folder / f"{search_id}-{failed[0]}.log"
        raise ConfigError(f"search process {failed[0]} of {search_id} exited with "
                          f"{procs[failed[0]].returncode}", hint=f"see {where}")


def _register_best(study: Any, store: Store) -> SearchResult:
    optuna = _optuna()
    states = {s.name: 0 for s in (optuna.trial.TrialState.COMPLETE,
                                  optuna.trial.TrialState.PRUNED,
                                  optuna.trial.TrialState.FAIL)}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    if not states["COMPLETE"]:
        reasons = [t.system_attrs.get("fail_reason", "") for t in study.trials]
        raise ConfigError(f"no trial of search {study.study_name} completed; nothing is "
                          f"registered. First failure: {next(iter(r for r in reasons if r), '-')}")
    best = study.best_trial
    row = {"trial": best.number, "value": best.value, "params": decoded(best),
           "run_id": best.user_attrs["run_id"]}
    mv = register_candidate(store, row["run_id"], {"search": {
        "id": study.study_name, "metric": study.user_attrs["metric"],
        "trials": len(study.trials), "pruned": states["PRUNED"], "failed": states["FAIL"],
        **row}})
    return SearchResult(study.study_name, mv, row, states)


def decoded(trial: Any) -> dict[str, Any]:
    """A trial's values as the config holds them (choices are JSON inside Optuna)."""
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in trial.params.items()}


def register_candidate(store: Store, run_id: str, extra: dict[str, Any]) -> m.ModelVersion:
    """Register what ``fit_candidate`` kept for ``run_id``, with ``extra`` in its lineage."""
    base = f"runs/{run_id}/candidate"
    spec = ModelSpec.model_validate_json(store.artifacts.get_bytes(f"{base}/spec.json"))
    spec.lineage.extra.update(extra)
    ds = open_dataset(store, f"{spec.lineage.dataset}@{spec.lineage.dataset_version}")
    run = store.meta.run(run_id)
    mv = register_model(
        store.meta, store.artifacts, run.name, spec,
        weights_blob=store.artifacts.get_bytes(f"{base}/{spec.weights_file}"),
        preprocessing=ds.pipeline.to_artifacts(), run_id=run_id,
        dataset_version_id=ds.row.id, aliases=("candidate",))
    store.meta.finish_run(run_id, "completed", summary={"version": mv.version})
    return mv


def main(argv: list[str] | None = None) -> int:
    """A search's child process: ``python -m stratum.train.search ID TRIALS WORKER``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m stratum.train.search SEARCH_ID TRIALS WORKER", file=sys.stderr)
        return 2
    run_trials(load_settings(), args[0], int(args[1]), int(args[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
