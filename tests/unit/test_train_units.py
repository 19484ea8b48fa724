"""Fast tests of the training pieces: config, metrics, checkpoints, the loop itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from stratum.errors import ConfigError, TrainingError
from stratum.store import LocalArtifactStore
from stratum.train import checkpoint as ckpt
from stratum.train import load_config, parse_config
from stratum.train.components import build_network, dry_run
from stratum.train.loop import Job, Shards, train
from stratum.train.metrics import ClassificationMeter, RegressionMeter, metric_names
from stratum.train.registry import check_strategy
from stratum.train.strategies import Single, WorkerEnv

BASE = {"dataset": "toy", "model": {"name": "mlp", "params": {"hidden": [16]}}}


def test_unknown_key_is_rejected_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("dataset: toy\nmodel: {name: mlp}\noptimiser: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"optimiser: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"model\.name"):
        parse_config({"dataset": "toy", "model": {}})


def test_cli_overrides_win_and_hash_ignores_how_it_ran(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("dataset: toy@latest\nmodel: {name: mlp}\nepochs: 3\n")
    a = load_config(p)
    b = load_config(p, epochs=7, workers=2, strategy=None)
    assert (a.epochs, b.epochs, b.workers, b.resolved_strategy()) == (3, 7, 2, "ddp")
    assert a.config_hash() == load_config(p, workers=4).config_hash() != b.config_hash()
    assert a.model_name == "toy"


def test_unknown_strategy_and_metric_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'fsdpp'"):
        check_strategy("fsdpp")
    with pytest.raises(ConfigError, match=r"\['r2'\] do not apply"):
        metric_names("classification", ["accuracy", "r2"])


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), y] += 1.0
    meter = ClassificationMeter(4)
    meter.update(torch.from_numpy(logits), torch.from_numpy(y))
    got = meter.compute()
    pred = logits.argmax(1)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_regression_metrics_match_sklearn_and_add_up_across_parts() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(5, 2, 200)
    pred = y + rng.normal(0, 1, 200)
    whole, a, b = RegressionMeter(), RegressionMeter(), RegressionMeter()
    whole.update(torch.from_numpy(pred), torch.from_numpy(y))
    a.update(torch.from_numpy(pred[:70]), torch.from_numpy(y[:70]))
    b.update(torch.from_numpy(pred[70:]), torch.from_numpy(y[70:]))
    got = whole.compute(a.state() + b.state())  # what a ddp all-reduce does
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, pred))
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))


def test_partial_or_corrupt_checkpoints_are_never_loaded(tmp_path: Path) -> None:
    art = LocalArtifactStore(tmp_path / "a")
    ckpt.save_checkpoint(art, "r1", 10, {"w": torch.ones(3), "position": {"step": 10}})
    ckpt.save_checkpoint(art, "r1", 20, {"w": torch.full((3,), 2.0)})
    # A save killed before its manifest: state present, manifest missing.
    art.put_bytes("runs/r1/checkpoints/0000000030/state.pt", b"half a checkpoint")
    got = ckpt.load_latest(art, "r1")
    assert got is not None and got.step == 20 and float(got.state["w"][0]) == 2.0
    # Corrupt the newest state's bytes behind the store's back: fall back to step 10.
    state = art.root / "runs/r1/checkpoints/0000000020/state.pt"
    state.write_bytes(state.read_bytes()[:-5] + b"xxxxx")
    got = ckpt.load_latest(art, "r1")
    assert got is not None and got.step == 10
    manifest = json.loads(art.get_bytes("runs/r1/checkpoints/0000000010/manifest.json"))
    assert manifest["position"] == {"step": 10}


def test_keeps_only_the_newest_checkpoints(tmp_path: Path) -> None:
    art = LocalArtifactStore(tmp_path / "a")
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(art, "r", step, {"x": torch.zeros(1)}, keep=2)
    assert ckpt.list_checkpoints(art, "r") == [4, 3]


def test_a_cnn_on_tabular_input_fails_before_training() -> None:
    cfg = parse_config({**BASE, "model": {"name": "mlp", "params": {"hidden": [8]}}})
    net = build_network(cfg, [4], 3)
    dry_run(net, np.zeros((5, 4), np.float32), 3, "mlp")  # fits
    with pytest.raises(ConfigError, match=r"does not accept .* input of shape \[5\]"):
        dry_run(net, np.zeros((5, 5), np.float32), 3, "mlp")
    cnn_cfg = parse_config({**BASE, "model": {"name": "cnn"}})
    with pytest.raises(ConfigError, match="cnn needs image input"):
        build_network(cnn_cfg, [64], 10)


def _toy(n: int = 240, nan: bool = False) -> Shards:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    if nan:
        x[7, 2] = np.nan
    return Shards(x_train=x, y_train=y, x_val=x[:60], y_val=y[:60], task="classification",
                  classes=[0, 1], input_shape=[4])


def test_loop_learns_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    art = LocalArtifactStore(tmp_path / "a")
    cfg = parse_config({**BASE, "epochs": 2, "batch_size": 16, "checkpoint_every": 5,
                        "optimizer": {"lr": 0.01}})
    first = train(Job(config=cfg, run_id="run1", dataset="toy@x"), Single(WorkerEnv()),
                  _toy(), art)
    assert first.global_step == 30 and first.resumed_from is None
    assert first.history[-1]["val_accuracy"] > 0.8
    more = cfg.model_copy(update={"epochs": 4})
    second = train(Job(config=more, run_id="run1", dataset="toy@x"), Single(WorkerEnv()),
                   _toy(), art)
    assert second.resumed_from == 30 and second.global_step == 60
    assert [h["epoch"] for h in second.history] == [1.0, 2.0, 3.0, 4.0]
    assert second.history[-1]["val_accuracy"] > 0.9


def test_nan_loss_names_the_step_and_epoch() -> None:
    cfg = parse_config({**BASE, "epochs": 1, "batch_size": 240})
    with pytest.raises(TrainingError, match=r"at step 1 \(epoch 1, batch 1 of 1\)"):
        train(Job(config=cfg, run_id="r", dataset="toy@x"), Single(WorkerEnv()),
              _toy(nan=True), None)
