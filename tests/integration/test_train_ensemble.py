"""Ensembles on real data: members trained in parallel processes, one registered version a
replica serves as one, stacking on out-of-fold outputs; bf16 autocast; the asynchronous
parameter server; and the bad inputs that must fail before training with one clear error
and nothing registered."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from stratum.config import Settings
from stratum.data import open_dataset
from stratum.errors import ConfigError
from stratum.models import load_predictor
from stratum.online.demo import digits
from stratum.store import Store, load_model
from stratum.store import models as m
from stratum.train import fit, parse_config
from stratum.train.loop import _autocast
from tests.integration.gateway_fixtures import REPLICA_AUTH, replica
from tests.integration.train_helpers import example, home_with

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return home_with(tmp_path_factory.mktemp("ensemble"), "digits", "breast_cancer")


@pytest.fixture(scope="module")
def store(home: Settings) -> Iterator[Store]:
    s = Store.open(home)
    yield s
    s.close()


def members(store: Store, mv: m.ModelVersion) -> list[dict[str, Any]]:
    return list(store.meta.run(mv.run_id or "").summary["members"])


def within_noise_of_the_best(rows: list[dict[str, Any]], split: str) -> tuple[str, bool]:
    """The ensemble against the member best on ``split``, paired row by row (McNemar): of
    the rows exactly one of them gets right, the member's extra ones may exceed the
    ensemble's by at most two standard errors, 2·sqrt(rows they disagree on)."""
    best = max(rows, key=lambda r: r[split]["accuracy"])
    p = best["paired"][split]
    only_ens, only_best = p["only_ensemble"], p["only_member"]
    return (f"{best['model']} (seed {best['seed']}) +{only_ens}/-{only_best}",
            only_best - only_ens <= 2 * math.sqrt(only_ens + only_best))


def at_least_the_member_picked_on(held: str, rows: list[dict[str, Any]],
                                  whole: dict[str, Any]) -> tuple[str, bool]:
    """The issue's bar, the ensemble >= its best member on the test split, with the best
    member picked as one would ship it: on the rows held out from training (``held``),
    not on the test rows it is then scored on. Every member tied for best must be matched."""
    scores = [r[held]["accuracy"] for r in rows]
    picks = [r["index"] for r, a in zip(rows, scores, strict=True) if a == max(scores)]
    assert whole["picked"] == {"on": held, "metric": "accuracy", "members": picks}
    ens = whole["test"]["accuracy"]
    return (f"picked on {held} {[round(a, 4) for a in scores]}: members {picks} at "
            f"{[rows[i]['test']['accuracy'] for i in picks]} on test, the ensemble {ens:.4f}",
            all(ens >= rows[i]["test"]["accuracy"] for i in picks))


@pytest.fixture(scope="module")
def soft(home: Settings, store: Store) -> m.ModelVersion:
    """Three mlps of examples/digits.yaml (seeds 0, 1, 2), soft voting, 2 processes."""
    cfg = example("digits", name="digits-soft", strategy="ensemble", workers=2, epochs=20,
                  ensemble={"combine": "soft", "members": [{}, {}, {}]})
    return fit(parse_config(cfg), home, store=store)


def test_soft_voting_of_three_seeds_against_its_members(store: Store,
                                                        soft: m.ModelVersion) -> None:
    """Soft voting >= the best member, picked on the validation split, on the test split.
    Against the member best on the test split itself the vote is only asserted within the
    noise of a paired comparison: the three agree on all but a few of the 179 test images,
    and the best of three measurements of the same rows is one image ahead of the vote in
    2 of 7 seed triples (bench/ensemble_seeds.py, docs/training.md)."""
    rows = members(store, soft)
    whole = store.meta.run(soft.run_id or "").summary["ensemble"]
    scores = [r["test"]["accuracy"] for r in rows]
    picked, bar = at_least_the_member_picked_on("val", rows, whole)
    versus, ok = within_noise_of_the_best(rows, "test")
    print(f"\nmembers (seeds {[r['seed'] for r in rows]}) {scores}, soft voting "
          f"{soft.metrics['accuracy']:.4f}; {picked}; vs the best on test {versus}")
    assert [r["seed"] for r in rows] == [0, 1, 2]
    assert whole["test"]["accuracy"] == soft.metrics["accuracy"]
    assert bar and ok
    assert soft.spec["framework"] == "ensemble" and soft.spec["params"]["combine"] == "soft"
    assert store.meta.aliases("digits-soft")["candidate"] == soft.version  # ONE version
    assert len(store.meta.model_versions("digits-soft")) == 1


def test_a_replica_serves_the_ensemble_as_one_model(
        home: Settings, store: Store, soft: m.ModelVersion, tmp_path: Path) -> None:
    images, labels = digits(store, "digits", "test")
    with replica(home, "digits-soft", tmp_path / "replica.log") as url:
        r = httpx.post(f"{url}/v1/models/digits-soft:predict", headers=REPLICA_AUTH,
                       json={"instances": images.tolist()}, timeout=60)
        info = httpx.get(f"{url}/admin/info", headers=REPLICA_AUTH, timeout=10).json()
    assert r.status_code == 200, r.text
    predicted = np.asarray([p["class"] for p in r.json()["predictions"]])
    assert (predicted == labels).mean() == pytest.approx(soft.metrics["accuracy"])
    assert info["runtime"]["framework"] == "ensemble", info


def test_stacking_logistic_forest_mlp_on_breast_cancer(home: Settings, store: Store) -> None:
    """The meta-learner is fitted on the members' out-of-fold outputs (5 folds over the
    train and validation rows); the members are then refit on all of those rows.

    The issue's bar: stacking >= the best member on the test split, that member picked out
    of fold over the 512 rows, not on the 57 test rows. Against the member best on the test
    split itself, decided by one row only the random forest (the weakest out of fold) gets
    right at some seeds, and out of fold, stacking is asserted within the noise of a paired
    comparison (bench/ensemble_seeds.py, docs/training.md)."""
    cfg = example("breast_cancer", name="bc-stacking", strategy="ensemble", workers=2,
                  ensemble={"combine": "stacking", "members": [
                      {}, {"model": {"name": "random_forest"}}, {"model": {"name": "mlp"}}]})
    mv = fit(parse_config(cfg), home, store=store)
    rows = members(store, mv)
    whole = store.meta.run(mv.run_id or "").summary["ensemble"]
    ds = open_dataset(store, "breast_cancer")
    picked, bar = at_least_the_member_picked_on("cv", rows, whole)
    cv_versus, cv_ok = within_noise_of_the_best(rows, "cv")
    test_versus, test_ok = within_noise_of_the_best(rows, "test")
    print(f"\nout of fold over {whole['rows']} rows: members "
          f"{[round(r['cv']['accuracy'], 4) for r in rows]}, stacking "
          f"{whole['cv']['accuracy']:.4f}, vs the best {cv_versus}; test split: members "
          f"{[round(r['test']['accuracy'], 4) for r in rows]}, stacking "
          f"{mv.metrics['accuracy']:.4f}, vs the best {test_versus}; {picked}")
    assert [r["framework"] for r in rows] == ["torch", "sklearn", "torch"]
    assert whole["rows"] == len(ds.load("train")[1]) + len(ds.load("val")[1])
    assert bar and cv_ok and test_ok
    # rebuilt from the registry alone, the version answers as fit measured it
    loaded = load_model(store.meta, store.artifacts, "bc-stacking", None)
    x, y = ds.load("test")
    acc = (load_predictor(loaded).predict(x).argmax(1) == y).mean()
    assert acc == pytest.approx(mv.metrics["accuracy"])
    assert loaded.spec.params["meta"] == "sklearn_logistic_cv"


def test_bf16_autocast_trains_and_runs_the_forward_in_bfloat16(home: Settings,
                                                               store: Store) -> None:
    """CPU opt-in (bf16: true); on a GPU with bf16 this is the default."""
    cfg = parse_config(example("digits", name="digits-bf16", bf16=True, epochs=10))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _autocast(cfg, device):
        out = torch.nn.Linear(4, 2).to(device)(torch.randn(3, 4, device=device))
    assert out.dtype == torch.bfloat16
    mv = fit(cfg, home, store=store)
    print(f"\nbf16 digits mlp, 10 epochs: {mv.metrics['accuracy']:.4f}")
    assert mv.metrics["accuracy"] >= 0.95


def test_async_parameter_server_with_bounded_staleness_trains(home: Settings,
                                                             store: Store) -> None:
    cfg = parse_config(example("digits", name="digits-async", strategy="parameter_server",
                               workers=2, epochs=10,
                               parameter_server={"servers": 1, "mode": "async",
                                                 "staleness": 1}))
    mv = fit(cfg, home, store=store)
    print(f"\nasync parameter server, digits mlp, 10 epochs: {mv.metrics['accuracy']:.4f}")
    assert mv.metrics["accuracy"] >= 0.95
    assert mv.spec["lineage"]["extra"]["strategy"] == "parameter_server"


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "unknown strategy": ({"strategy": "allreduce"}, "unknown strategy 'allreduce'"),
    "fsdp on one worker": ({"strategy": "fsdp", "workers": 1}, "needs at least 2 workers"),
    "member cannot load": (
        {"strategy": "ensemble", "workers": 2, "ensemble": {"members": [
            {}, {"model": {"name": "no_such_pkg.models:net"}}]}},
        "ensemble member 1 .no_such_pkg.models:net. cannot be built"),
    "meta-learner cannot be built": (
        {"strategy": "ensemble", "workers": 2, "ensemble": {
            "combine": "stacking", "members": [{}, {}], "meta": {"name": "no_such_meta"}}},
        "the stacking meta-learner cannot be built: scikit-learn model 'no_such_meta'"),
    "stacking with early stopping": (
        {"strategy": "ensemble", "workers": 2, "early_stopping": {"patience": 2},
         "ensemble": {"combine": "stacking", "members": [{}, {}]}},
        "early_stopping cannot be used with combine: stacking"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_strategy_input_is_one_clear_error_and_registers_nothing(
        home: Settings, store: Store, case: str) -> None:
    change, message = BAD[case]
    runs = len(store.meta.runs("digits-bad"))
    with pytest.raises(ConfigError, match=message):
        fit(parse_config(example("digits", name="digits-bad", **change)), home, store=store)
    assert store.meta.aliases("digits-bad") == {}
    assert len(store.meta.runs("digits-bad")) == runs  # refused before a run was opened


def test_cli_refuses_a_multi_worker_strategy_on_one_worker_in_one_line(
        home: Settings, tmp_path: Path) -> None:
    config = tmp_path / "ps.yaml"
    config.write_text("dataset: digits\nmodel: {name: mlp}\nstrategy: parameter_server\n")
    out = subprocess.run([str(Path(sys.executable).with_name("stratum")), "--home",
                          str(home.home), "train", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "error: strategy 'parameter_server' needs at least 2 workers" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
