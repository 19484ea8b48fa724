"""The cnn of examples/mnist.yaml on 5,000 real MNIST digits: the accuracy bars for one
process and for ddp with 2 workers, and a ddp job that loses a worker to SIGKILL mid-epoch
and finishes by itself, losing at most one checkpoint interval of work.

Each run trains the full example (8 epochs, about 35 s on one core); the ddp run is
shared by the ddp and the fault-tolerance tests."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from stratum.config import Settings
from stratum.store import Store
from stratum.store import models as m
from stratum.train import Progress, fit, parse_config
from stratum.train.launcher import run_dir, worker_pids
from tests.integration.train_helpers import example

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(mnist_home: Settings) -> Settings:
    return mnist_home  # one mnist home and ddp run for the session (conftest.py)


@pytest.fixture(scope="module")
def store(mnist_store: Store) -> Store:
    return mnist_store


@pytest.fixture(scope="module")
def single(home: Settings, store: Store) -> m.ModelVersion:
    # One thread for one process, as each ddp worker gets one of the two cores. torch's
    # default (a thread per core) runs several times slower when the cores are shared
    # with other jobs, as on CI runners.
    return fit(parse_config(example("mnist", name="mnist-single", threads=1)), home,
               store=store)


@pytest.fixture(scope="module")
def ddp(mnist_ddp: m.ModelVersion) -> m.ModelVersion:
    return mnist_ddp


def summary(store: Store, mv: m.ModelVersion) -> dict[str, Any]:
    return dict(store.meta.run(mv.run_id or "").summary)


def test_cnn_single_process_reaches_97_percent(single: m.ModelVersion) -> None:
    assert single.metrics["accuracy"] >= 0.97, single.metrics


def test_cnn_ddp_two_workers_matches_single(store: Store, single: m.ModelVersion,
                                            ddp: m.ModelVersion) -> None:
    assert ddp.spec["lineage"]["extra"]["strategy"] == "ddp"
    assert ddp.spec["lineage"]["extra"]["workers"] == 2
    assert ddp.metrics["accuracy"] >= 0.97, ddp.metrics
    assert abs(ddp.metrics["accuracy"] - single.metrics["accuracy"]) <= 0.01, (
        ddp.metrics, single.metrics)
    assert summary(store, ddp)["restarts"] == []


def test_sigkilled_ddp_worker_is_restarted_from_the_last_checkpoint(
        home: Settings, store: Store, ddp: m.ModelVersion) -> None:
    cfg = parse_config(example("mnist", name="mnist-kill", workers=2))
    killed: dict[str, int] = {}

    def kill_rank1_mid_epoch(p: Progress) -> None:
        if killed or p.phase != "train" or p.attempt != 0 or not p.epochs:
            return
        per_epoch = p.total_steps // p.epochs
        if p.step < 2 * per_epoch + per_epoch // 2:  # halfway through the third epoch
            return
        (run,) = [r for r in store.meta.runs("mnist-kill") if r.status == "running"]
        pids = worker_pids(run_dir(home, run.id))
        os.kill(pids[1], signal.SIGKILL)
        killed.update(step=p.step, pid=pids[1])

    mv = fit(cfg, home, progress=kill_rank1_mid_epoch, store=store)  # no help from the test

    assert killed, "the run ended before the worker could be killed"
    done = summary(store, mv)
    (restart,) = done["restarts"]
    print(f"\nkilled rank 1 at step {killed['step']}: {restart}; accuracy "
          f"{mv.metrics['accuracy']:.3f} (uninterrupted ddp {ddp.metrics['accuracy']:.3f})")
    assert restart["attempt"] == 0 and restart["last_step"] >= killed["step"]
    assert (restart["rank"], restart["pid"], restart["returncode"]) == (
        1, killed["pid"], -signal.SIGKILL)
    # Lost work: from the last step seen before the death back to the checkpoint resumed.
    assert restart["resumed_from"] is not None
    assert restart["resumed_from"] >= restart["last_step"] - cfg.checkpoint_every
    assert restart["recover_s"] is not None and restart["recover_s"] > 0
    assert done["global_step"] == summary(store, ddp)["global_step"]  # none skipped/repeated
    assert mv.spec["lineage"]["extra"]["restarts"] == 1
    assert store.meta.run(mv.run_id or "").status == "completed"
    assert abs(mv.metrics["accuracy"] - ddp.metrics["accuracy"]) <= 0.01, (
        mv.metrics, ddp.metrics)
