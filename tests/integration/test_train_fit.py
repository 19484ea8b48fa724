"""``stratum.train.fit`` on real built-in datasets: the accuracy bars, the registry entry,
clear errors before training and no half-registered version after a failure."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from stratum.config import Settings
from stratum.data import open_dataset
from stratum.data.preprocessing import Pipeline
from stratum.errors import ConfigError, TrainingError
from stratum.models import build_model
from stratum.models import estimators as skl
from stratum.store import Store, load_model
from stratum.train import Progress, fit, parse_config
from tests.integration.train_helpers import example, home_with


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return home_with(tmp_path_factory.mktemp("train"), "iris", "breast_cancer", "diabetes",
                     "digits")


@pytest.fixture
def store(home: Settings) -> Iterator[Store]:
    s = Store.open(home)
    yield s
    s.close()


def test_breast_cancer_logistic_registers_a_servable_version(home: Settings,
                                                             store: Store) -> None:
    mv = fit(parse_config(example("breast_cancer")), home, store=store)
    assert mv.metrics["accuracy"] >= 0.95, mv.metrics
    assert store.meta.aliases("breast_cancer")["candidate"] == mv.version
    loaded = load_model(store.meta, store.artifacts, "breast_cancer", "candidate")
    spec = loaded.spec
    assert (spec.architecture, spec.task, spec.input_shape) == ("logistic", "classification",
                                                                [30])
    assert spec.lineage.dataset_version and spec.lineage.config_hash and spec.lineage.run_id
    # Rebuild from the registry alone and reproduce the test accuracy on raw inputs.
    ds = open_dataset(store, "breast_cancer")
    assert loaded.preprocessing is not None
    pipe = Pipeline.from_artifacts(*loaded.preprocessing)
    net = build_model(spec.architecture, spec.input_shape, len(spec.classes or []),
                      **spec.params)
    net.load_state_dict(loaded.torch_state_dict())
    table = ds.load_table("test")
    x = pipe.transform({f: table[f].to_numpy() for f in spec.feature_names or []})
    _, y = ds.load("test")
    with torch.no_grad():
        acc = (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc == pytest.approx(mv.metrics["accuracy"])
    run = store.meta.run(mv.run_id or "")
    assert run.status == "completed"
    assert {m.key for m in store.meta.metrics(run.id)} >= {"epoch_samples_per_s", "val_loss",
                                                           "test_accuracy"}


def test_diabetes_linear_regression_r2(home: Settings, store: Store) -> None:
    mv = fit(parse_config(example("diabetes")), home, store=store)
    assert mv.metrics["r2"] >= 0.40, mv.metrics
    assert set(mv.metrics) == {"loss", "mse", "mae", "r2"}


def test_digits_random_forest_is_stored_with_skops_not_pickle(home: Settings,
                                                              store: Store) -> None:
    mv = fit(parse_config(example("digits-rf", model={"name": "random_forest",
                                                      "params": {"n_estimators": 60}})),
             home, store=store)
    assert mv.metrics["accuracy"] >= 0.93, mv.metrics
    loaded = load_model(store.meta, store.artifacts, "digits-rf", mv.version)
    assert loaded.spec.framework == "sklearn" and loaded.spec.weights_file == "model.skops"
    est = skl.loads(loaded.weights_blob)
    x, y = open_dataset(store, "digits").load("test")
    assert (est.predict(x.reshape(len(x), -1)) == y).mean() == pytest.approx(
        mv.metrics["accuracy"])


@pytest.mark.parametrize(("change", "message"), [
    ({"model": {"name": "transformer"}}, "unknown model 'transformer'"),
    ({"dataset": "nosuch"}, "unknown dataset 'nosuch'"),
    ({"strategy": "gossip"}, "unknown strategy 'gossip'"),
    ({"model": {"name": "cnn"}}, "cnn needs image input"),
    ({"model": {"name": "mlp", "params": {"hidden": "wide"}}}, "bad parameters|does not accept"),
    ({"metrics": ["r2"]}, "do not apply to a classification"),
])
def test_bad_configs_fail_before_training(home: Settings, store: Store, change: dict[str, object],
                                          message: str) -> None:
    runs_before = len(store.meta.runs(limit=1000))
    with pytest.raises(ConfigError, match=message):
        fit(parse_config(example("iris", name="bad-iris", **change)), home, store=store)
    assert len(store.meta.runs(limit=1000)) == runs_before  # nothing started
    assert store.meta.model_versions("bad-iris") == []


def test_nan_loss_fails_the_run_and_registers_nothing(home: Settings, store: Store) -> None:
    cfg = example("diabetes", name="nan-diabetes", optimizer={"name": "sgd", "lr": 50.0})
    with pytest.raises(TrainingError, match=r"loss became .* at step \d+ \(epoch \d+"):
        fit(parse_config(cfg), home, store=store)
    assert store.meta.model_versions("nan-diabetes") == []
    (run,) = store.meta.runs("nan-diabetes")
    assert run.status == "failed" and "loss became" in (run.error or "")


def test_interrupted_run_resumes_from_its_checkpoint(home: Settings, store: Store) -> None:
    cfg = parse_config(example("iris", name="resume-iris", epochs=10, checkpoint_every=10))
    seen: list[int] = []

    def stop_midway(p: Progress) -> None:
        seen.append(p.step)
        if p.step >= 45:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, home, progress=stop_midway, store=store)
    (run,) = store.meta.runs("resume-iris")
    assert run.status == "stopped" and store.meta.model_versions("resume-iris") == []
    mv = fit(cfg, home, resume=True, store=store)
    summary = store.meta.run(mv.run_id or "").summary
    assert mv.run_id == run.id and summary["resumed_from"] >= 40
    assert summary["global_step"] == 80  # 10 epochs x 8 steps, none repeated or skipped
    assert mv.metrics["accuracy"] >= 0.9


def test_digits_mlp_single_process(home: Settings, store: Store) -> None:
    mv = fit(parse_config(example("digits")), home, store=store)
    assert mv.metrics["accuracy"] >= 0.97, mv.metrics
    assert np.isfinite(store.meta.run(mv.run_id or "").summary["samples_per_s"])


@pytest.mark.integration
def test_digits_mlp_ddp_two_workers_matches_single(home: Settings, store: Store) -> None:
    single = fit(parse_config(example("digits", name="digits-single")), home, store=store)
    ddp = fit(parse_config(example("digits", name="digits-ddp", workers=2)), home, store=store)
    assert ddp.spec["lineage"]["extra"]["strategy"] == "ddp"
    assert ddp.metrics["accuracy"] >= 0.97, ddp.metrics
    assert abs(ddp.metrics["accuracy"] - single.metrics["accuracy"]) <= 0.01
