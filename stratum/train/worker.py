"""One training worker process: ``python -m stratum.train.worker JOB.json``.

It reads where it sits from torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and its settings from STRATUM_SETTINGS_JSON, so the local
launcher or ``torchrun`` can start it; a Ray Train worker calls its body, ``run_worker``,
with the same variables set by Ray Train. Rank 0 writes live progress to
``job.progress_file`` and, at the end, the final weights and a result document to the
artifact store under ``runs/{run_id}/final/``.

Exit codes: 0 done; 3 a StratumError (bad config, NaN loss — restarting cannot help, the
error is left in ``error-{rank}.json`` beside the job file); anything else is a crash that
the launcher answers by restarting the group from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from stratum.config import Settings, load_settings
from stratum.data import open_dataset
from stratum.errors import StratumError
from stratum.monitor.logging import setup_logging
from stratum.store import Store
from stratum.train.loop import Job, Progress, Report, Shards, TrainResult, train
from stratum.train.registry import make_strategy, strategy_kind
from stratum.train.strategies import WorkerEnv

EXIT_STRATUM_ERROR = 3


def final_prefix(run_id: str) -> str:
    return f"runs/{run_id}/final"


def load_shards(store: Store, ref: str, worker: int = 0, world: int = 1) -> Shards:
    """This worker's train and val arrays, through the data layer's shard reader."""
    ds = open_dataset(store, ref)
    x, y = ds.load("train", worker=worker, world=world)
    xv, yv = ds.load("val", worker=worker, world=world)
    return Shards(x_train=x, y_train=y, x_val=xv, y_val=yv, task=ds.task,
                  classes=ds.classes, input_shape=list(ds.input_shape))


def write_final(store: Store, run_id: str, result: TrainResult) -> None:
    """Publish the weights first, the result document (which names them) last."""
    base = final_prefix(run_id)
    store.artifacts.put_bytes(f"{base}/weights.safetensors", st_save(result.state_dict))
    store.artifacts.put_bytes(f"{base}/result.json", json.dumps(result.summary()).encode())


def progress_writer(path: str | None) -> Report | None:
    if path is None:
        return None
    target = Path(path)

    def write(p: Progress) -> None:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(p.model_dump_json())
        os.replace(tmp, target)  # the launcher never reads half a report

    return write


def run_worker(job: Job, settings: Settings, env: WorkerEnv,
               report: Report | None = None) -> None:
    """Train this worker's share of ``job`` and, on the main rank, publish the result: what
    every launcher runs in each worker (a local process, a Ray Train worker). ``report``
    gets rank 0's progress. A StratumError (bad config, NaN loss) propagates unchanged."""
    threads = job.config.threads or settings.train.threads_per_worker
    if threads:
        torch.set_num_threads(threads)
    store = Store.open(settings)
    report = report if env.rank == 0 else None
    try:
        def load(worker: int, world: int) -> Shards:
            return load_shards(store, job.dataset, worker, world)

        # a parameter server's servers and an ensemble's member processes run their own body
        body = strategy_kind(job.config.resolved_strategy()).process
        if body is not None and body(job, store, env, load, report):
            return
        strategy = make_strategy(job.config, env)
        try:
            shards = strategy.load_data(load)  # the strategy's rows: its rank, its world
            result = train(job, strategy, shards, store.artifacts, metrics_sink=store.meta,
                           report=report)
            if strategy.is_main:
                write_final(store, job.run_id, result)
        finally:
            strategy.close()
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m stratum.train.worker JOB.json", file=sys.stderr)
        return 2
    job_path = Path(args[0])
    job = Job.model_validate_json(job_path.read_text())
    env = WorkerEnv.from_env()
    settings = load_settings()
    setup_logging(settings.log_level, component="train-worker", run=job.run_id,
                  model=job.config.model_name, rank=env.rank, attempt=job.attempt)
    try:
        run_worker(job, settings, env, progress_writer(job.progress_file))
    except StratumError as exc:
        error = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                 "rank": env.rank}
        (job_path.parent / f"error-{env.rank}.json").write_text(json.dumps(error))
        print(f"worker {env.rank}: {exc}", file=sys.stderr)
        return EXIT_STRATUM_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
