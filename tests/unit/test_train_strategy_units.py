"""Fast tests of the strategies' pieces: client partitions, parameter placement, sharded
checkpoints, the ensemble file and combiners, stacking's folds and meta-learner,
augmentation by config, search spaces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from stratum.data.augment import Augment
from stratum.errors import ConfigError, IntegrityError
from stratum.models import build_model
from stratum.models import estimators as skl
from stratum.models.ensemble import Member, combine, stack_features, unpack
from stratum.models.ensemble import pack as pack_members
from stratum.store import LocalArtifactStore
from stratum.train import checkpoint as ckpt
from stratum.train import parse_config, stacking
from stratum.train.fedavg import label_skew
from stratum.train.param_server import owner
from stratum.train.registry import check_workers, processes
from stratum.train.search_space import as_param, parse_space, set_key

BASE = {"dataset": "toy", "model": {"name": "mlp", "params": {"hidden": [16]}}}


def test_label_skew_gives_equal_disjoint_clients_few_labels_each() -> None:
    y = np.repeat(np.arange(10), 400)
    clients = label_skew(y, 4, 2, seed=0)
    assert [len(c) for c in clients] == [1000] * 4
    assert len(np.unique(np.concatenate(clients))) == 4000
    assert all(len(np.unique(y[c])) <= 4 for c in clients)
    assert [c.tolist() for c in clients] == [c.tolist() for c in label_skew(y, 4, 2, seed=0)]


def test_parameters_are_placed_by_a_stable_hash_of_their_name() -> None:
    names = [n for n, _ in build_model("cnn", [1, 28, 28], 10).named_parameters()]
    placed = [owner(n, 2) for n in names]
    assert placed == [owner(n, 2) for n in names] and set(placed) == {0, 1}
    assert owner("0.weight", 3) == owner("0.weight", 3) < 3


def test_strategy_worker_counts_and_processes() -> None:
    with pytest.raises(ConfigError, match="'fsdp' needs at least 2 workers"):
        check_workers(parse_config({**BASE, "strategy": "fsdp"}))
    with pytest.raises(ConfigError, match="needs an ensemble: section"):
        check_workers(parse_config({**BASE, "strategy": "ensemble"}))
    ps = parse_config({**BASE, "strategy": "parameter_server", "workers": 2,
                       "parameter_server": {"servers": 3}})
    assert (check_workers(ps), processes(ps)) == ("parameter_server", 5)


def test_a_sharded_checkpoint_is_loaded_only_with_every_part_intact(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    state = {"position": {"epoch": 1, "step": 0, "global_step": 7}}
    for step in (5, 7):
        named = {**ckpt.publish_files(store, "r", step, {"part-0.pt": b"zero"}),
                 **ckpt.publish_files(store, "r", step, {"part-1.pt": b"one"})}
        ckpt.save_checkpoint(store, "r", step, state, files=named)
    found = ckpt.load_latest(store, "r")
    assert found is not None and found.step == 7
    assert (found.read("part-0.pt"), found.read("part-1.pt")) == (b"zero", b"one")
    store.put_bytes("runs/r/checkpoints/0000000007/part-1.pt", b"changed")  # not its digest
    older = ckpt.load_latest(store, "r")
    assert older is not None and older.step == 5
    ckpt.save_checkpoint(store, "r", 9, state, keep=1)  # old steps go, every part with them
    assert [p for p in store.list("runs/r/checkpoints") if "/0000000005/" in p] == []


def test_an_ensemble_file_round_trips_and_names_a_missing_member() -> None:
    net = build_model("mlp", [4], 3, hidden=[8])
    est = skl.fit_estimator(skl.build_estimator("random_forest", "classification",
                                                {"n_estimators": 5}, 0),
                            np.random.default_rng(0).normal(size=(30, 4)),
                            np.arange(30) % 3)
    members = [Member("torch", "mlp", {"hidden": [8]}, st_save(net.state_dict())),
               Member("sklearn", "random_forest", {}, skl.dumps(est))]
    blob = pack_members(members, meta=b"meta-bytes")
    back, meta = unpack(blob, [m.doc() for m in members], "v1")
    assert meta == b"meta-bytes" and back[1].blob == members[1].blob
    again = build_model("mlp", [4], 3, hidden=[8])
    again.load_state_dict(st_load(back[0].blob))
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), net.parameters(),
                                                  strict=True))
    with pytest.raises(IntegrityError, match=r"member 2 \(mlp\) has no weights"):
        unpack(blob, [m.doc() for m in members] + [members[0].doc()], "v1")


def test_soft_and_hard_voting() -> None:
    a = np.array([[0.6, 0.4], [0.2, 0.8]], np.float32)
    b = np.array([[0.9, 0.1], [0.6, 0.4]], np.float32)
    c = np.array([[0.4, 0.6], [0.45, 0.55]], np.float32)
    soft = combine("soft", [a, b, c], None, True, 2)
    assert soft.argmax(1).tolist() == [0, 1] and soft[0, 0] == pytest.approx(19 / 30)
    assert combine("hard", [a, b, c], None, True, 2).argmax(1).tolist() == [0, 1]


def test_stacking_folds_cover_every_row_once_and_are_the_same_in_every_process() -> None:
    y = np.repeat(np.arange(3), [30, 12, 8])
    held = stacking.folds(y, 5, seed=4, classify=True)
    assert sorted(np.concatenate(held).tolist()) == list(range(len(y)))
    assert all(sorted(np.unique(y[h]).tolist()) == [0, 1, 2] for h in held)  # stratified
    again = stacking.folds(y, 5, seed=4, classify=True)
    assert [h.tolist() for h in held] == [h.tolist() for h in again]
    assert len(stacking.folds(y, 10, seed=4, classify=True)) == 10  # 8 of class 2: shuffled
    with pytest.raises(ConfigError, match="needs at least 5 training rows"):
        stacking.folds(y[:4], 5, seed=0, classify=True)


def test_out_of_fold_outputs_come_back_in_row_order_and_must_cover_every_row(
        tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    y = np.arange(20) % 2
    held = stacking.folds(y, 4, seed=0, classify=True)
    for k, rows in enumerate(held):  # a "model" that answers its row number
        store.put_bytes(stacking.fold_path("m", k),
                        stacking.fold_bytes(rows, np.stack([rows, -rows], 1)))
    oof = stacking.out_of_fold(store, "m", 4, 20)
    assert oof[:, 0].tolist() == list(range(20))
    with pytest.raises(IntegrityError, match="do not cover all 21 rows"):
        stacking.out_of_fold(store, "m", 4, 21)


def test_the_stacking_meta_learner_round_trips_and_scores_out_of_fold() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    said = np.where(rng.random(120) < 0.9, y, (y + 1) % 3)  # a member right 9 times in 10
    good, noise = np.eye(3)[said] * 0.8 + 0.1, rng.dirichlet(np.ones(3), 120)
    features = stack_features([good, noise], True)
    meta = skl.fit_estimator(skl.build_estimator("sklearn_logistic_cv", "classification", {},
                                                 0), features, y)
    back = skl.loads(skl.dumps(meta))  # skops, trusted types only
    assert np.array_equal(combine("stacking", [good, noise], back, True, 3),
                          combine("stacking", [good, noise], meta, True, 3))
    held = stacking.folds(y, 5, seed=0, classify=True)
    quick = skl.build_estimator("sklearn_logistic", "classification", {}, 0)  # 1 fit, not 50
    cv = stacking.cross_validated(quick, features, y, held, True, 3).argmax(1)
    assert (cv == said).mean() >= 0.95  # it learned to follow the member worth following
    noise_only = stacking.cross_validated(quick, np.c_[noise, noise], y, held, True, 3)
    assert (noise_only.argmax(1) == y).mean() < 0.6  # out of fold, noise stays noise


def test_augment_by_config_is_seeded_and_fills_with_the_background() -> None:
    cfg = parse_config({**BASE, "augment": [{"rotate": 15}, {"crop": 2}]})
    assert cfg.augment == {"rotate": 15, "crop": 2}
    with pytest.raises(ConfigError, match="unknown augmentation"):
        parse_config({**BASE, "augment": {"blur": 1}})
    aug = Augment.from_config(cfg.augment or {}, seed=3)
    x = torch.full((4, 1, 8, 8), -0.4)
    x[:, :, 3:5, 3:5] = 2.0
    aug.reseed(1, 2, 0)
    first = aug(x)
    aug.reseed(1, 2, 0)
    assert torch.equal(first, aug(x))  # a fixed position draws the same, resumed or not
    assert first.min() >= -0.4 - 1e-6  # uncovered pixels are the background, not 0


def test_search_space_parsing() -> None:
    with pytest.raises(ConfigError, match="is empty"):
        parse_space({})
    with pytest.raises(ConfigError, match="needs exactly one of"):
        parse_space({"optimizer.lr": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="low < high"):
        parse_space({"optimizer.lr": {"float": [0.2, 0.1]}})
    lr, hidden = parse_space({"optimizer.lr": {"float": [1e-4, 1e-2], "log": True},
                              "model.params.hidden": {"choice": [[64], [256, 128]]}})
    assert (lr.kind, lr.log, hidden.choices) == ("float", True, ("[64]", "[256, 128]"))
    assert (as_param(lr, 0.002), as_param(lr, 0.5), as_param(hidden, [256, 128])) == (
        0.002, None, "[256, 128]")
    doc: dict[str, object] = {"model": {"name": "mlp"}}
    set_key(doc, "model.params.hidden", [64])
    assert doc == {"model": {"name": "mlp", "params": {"hidden": [64]}}}
