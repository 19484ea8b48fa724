"""parameter_server, fsdp, fedavg and augmentation against ddp, on the cnn of
examples/mnist.yaml and 5,000 real MNIST digits (the ddp run is the session's, shared with
test_train_mnist.py).

To keep CI short, the parameter-server and fsdp runs are also the fault-tolerance runs:
each loses worker rank 1 to SIGKILL halfway through epoch 3, must finish by itself from
its last (sharded) checkpoint, and is then held to the accuracy bar against ddp."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stratum.config import Settings
from stratum.data import open_dataset
from stratum.data.augment import Augment
from stratum.models import load_predictor
from stratum.store import Store, load_model
from stratum.store import models as m
from stratum.train import fit, parse_config
from stratum.train.checkpoint import list_checkpoints
from stratum.train.fedavg import label_skew
from tests.integration.train_helpers import example, kill_mid_epoch

pytestmark = pytest.mark.integration
Killed = tuple[m.ModelVersion, dict[str, int]]


def summary(store: Store, mv: m.ModelVersion) -> dict[str, Any]:
    return dict(store.meta.run(mv.run_id or "").summary)


def killed_run(home: Settings, store: Store, name: str, **changes: Any) -> Killed:
    callback, killed = kill_mid_epoch(store, home, name, pid_index=1)
    mv = fit(parse_config(example("mnist", name=name, workers=2, **changes)), home,
             progress=callback, store=store)
    return mv, killed


@pytest.fixture(scope="module")
def ps(mnist_home: Settings, mnist_store: Store) -> Killed:
    return killed_run(mnist_home, mnist_store, "mnist-ps", strategy="parameter_server",
                      parameter_server={"servers": 2})


@pytest.fixture(scope="module")
def fsdp(mnist_home: Settings, mnist_store: Store) -> Killed:
    return killed_run(mnist_home, mnist_store, "mnist-fsdp", strategy="fsdp")


def assert_resumed(store: Store, run: Killed, ddp: m.ModelVersion) -> None:
    mv, killed = run
    assert killed, "the run ended before the worker could be killed"
    done = summary(store, mv)
    (restart,) = done["restarts"]
    print(f"\n{mv.name}: killed rank 1 at step {killed['step']}: {restart}")
    assert (restart["rank"], restart["pid"]) == (1, killed["pid"])
    assert restart["resumed_from"] is not None and restart["recover_s"] > 0
    assert restart["resumed_from"] >= restart["last_step"] - 50  # checkpoint_every
    assert done["global_step"] == summary(store, ddp)["global_step"]  # none lost or repeated
    assert mv.spec["lineage"]["extra"]["restarts"] == 1


def assert_matches_ddp(run: Killed, ddp: m.ModelVersion, strategy: str) -> None:
    mv = run[0]
    print(f"\n{strategy} accuracy {mv.metrics['accuracy']:.3f}, "
          f"ddp {ddp.metrics['accuracy']:.3f}")
    assert mv.spec["lineage"]["extra"]["strategy"] == strategy
    assert abs(mv.metrics["accuracy"] - ddp.metrics["accuracy"]) <= 0.01


def test_parameter_server_2_workers_2_servers_within_a_point_of_ddp(
        ps: Killed, mnist_ddp: m.ModelVersion) -> None:
    assert_matches_ddp(ps, mnist_ddp, "parameter_server")


def test_parameter_server_sigkilled_worker_resumes_from_server_checkpoints(
        ps: Killed, mnist_store: Store, mnist_ddp: m.ModelVersion) -> None:
    assert_resumed(mnist_store, ps, mnist_ddp)
    run_id = ps[0].run_id or ""
    step = list_checkpoints(mnist_store.artifacts, run_id)[0]
    names = {p.rsplit("/", 1)[-1] for p in mnist_store.artifacts.list(
        f"runs/{run_id}/checkpoints/{step:010d}")}
    assert {"server-0.pt", "server-1.pt"} <= names  # each server's partition and optimizer


def test_fsdp_2_workers_within_a_point_of_ddp(fsdp: Killed, mnist_ddp: m.ModelVersion
                                              ) -> None:
    assert_matches_ddp(fsdp, mnist_ddp, "fsdp")


def test_fsdp_sigkilled_worker_resumes_from_sharded_checkpoint(
        fsdp: Killed, mnist_store: Store, mnist_ddp: m.ModelVersion) -> None:
    assert_resumed(mnist_store, fsdp, mnist_ddp)
    run_id = fsdp[0].run_id or ""
    step = list_checkpoints(mnist_store.artifacts, run_id)[0]
    names = {p.rsplit("/", 1)[-1] for p in mnist_store.artifacts.list(
        f"runs/{run_id}/checkpoints/{step:010d}")}
    assert {"dcp-metadata", "dcp-__0_0.distcp", "dcp-__1_0.distcp"} <= names


def test_fsdp_worker_holds_half_the_parameter_and_optimizer_bytes_of_ddp(
        fsdp: Killed, mnist_store: Store, mnist_ddp: m.ModelVersion) -> None:
    def held(mv: m.ModelVersion) -> list[int]:
        return [w["param_bytes"] + w["optimizer_bytes"] for w in summary(mnist_store, mv)["memory"]]

    ours, theirs = held(fsdp[0]), held(mnist_ddp)
    print(f"\nper-worker parameter + optimizer bytes: fsdp {ours}, ddp {theirs}")
    assert len(ours) == len(theirs) == 2
    for mine, full in zip(ours, theirs, strict=True):
        assert 0.45 <= mine / full <= 0.55, (ours, theirs)
    # the registered weights are the whole model, loadable as any cnn version
    loaded = load_model(mnist_store.meta, mnist_store.artifacts, "mnist-fsdp", None)
    x, y = open_dataset(mnist_store, "mnist").load("test")
    acc = (load_predictor(loaded).predict(x).argmax(1) == y).mean()
    assert acc == pytest.approx(fsdp[0].metrics["accuracy"])


def test_fedavg_4_label_skewed_clients_within_3_points_of_ddp(
        mnist_home: Settings, mnist_store: Store, mnist_ddp: m.ModelVersion) -> None:
    fed = {"partition": "label_skew", "shards_per_client": 3, "local_epochs": 1}
    mv = fit(parse_config(example("mnist", name="mnist-fedavg", strategy="fedavg", workers=4,
                                  fedavg=fed)), mnist_home, store=mnist_store)
    # each client holds at most 6 of the 10 digits, mostly 3 or 4
    _, y = open_dataset(mnist_store, "mnist").load("train")
    clients = label_skew(y, 4, 3, 0)
    held = [len(np.unique(y[idx])) for idx in clients]
    assert max(held) <= 6, held
    # the same sample passes as ddp: 8 rounds x 1 local epoch over every client's rows
    # (4 x 999: the remainder of 4,000 / 12 chunks sits out) against 8 epochs of 4,000
    ours, theirs = summary(mnist_store, mv), summary(mnist_store, mnist_ddp)
    assert len(ours["history"]) == len(theirs["history"]) == 8
    assert sum(map(len, clients)) / len(y) >= 0.99
    print(f"\nfedavg (clients hold {held} digits) accuracy {mv.metrics['accuracy']:.3f}, "
          f"ddp {mnist_ddp.metrics['accuracy']:.3f}; per round: "
          f"{[round(h['val_accuracy'], 3) for h in ours['history']]}")
    assert mnist_ddp.metrics["accuracy"] - mv.metrics["accuracy"] <= 0.03


def test_augmentation_improves_accuracy_on_rotated_test_digits(
        mnist_home: Settings, mnist_store: Store, mnist_ddp: m.ModelVersion) -> None:
    """The same ddp run (epochs, seed) with `augment: [rotate: 15, crop: 2]`, both judged on
    the test split rotated by up to 25 degrees."""
    mv = fit(parse_config(example("mnist", name="mnist-augment", workers=2,
                                  augment=[{"rotate": 15}, {"crop": 2}])),
             mnist_home, store=mnist_store)
    x, y = open_dataset(mnist_store, "mnist").load("test")
    rotated = Augment(rotation=25, seed=1)(x)

    def accuracy(name: str) -> float:
        loaded = load_model(mnist_store.meta, mnist_store.artifacts, name, None)
        return float((load_predictor(loaded).predict(rotated).argmax(1) == y).mean())

    on, off = accuracy("mnist-augment"), accuracy("mnist-ddp")
    print(f"\nrotated test accuracy: augment on {on:.3f}, off {off:.3f}; "
          f"plain test: on {mv.metrics['accuracy']:.3f}, off {mnist_ddp.metrics['accuracy']:.3f}")
    assert on > off + 0.01
