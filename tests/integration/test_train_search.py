"""``stratum tune`` (the CLI, a real process) on builtin:digits: 8 Optuna trials, 2 at a
time, against examples/digits.yaml as it is; pruning; the registered winner's lineage;
``stratum tune show``; and an empty search space refused with nothing registered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stratum.config import Settings
from stratum.store import Store
from stratum.train import fit, parse_config
from tests.integration.train_helpers import EXAMPLES, example, home_with

pytestmark = pytest.mark.integration
STRATUM = str(Path(sys.executable).with_name("stratum"))
SPACE = """\
optimizer.lr: {float: [0.0001, 0.02], log: true}
model.params.dropout: {float: [0.0, 0.5]}
model.params.hidden: {choice: [[64], [256, 128], [512, 256]]}
"""


def cli(home: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STRATUM, "--home", str(home.home), *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return home_with(tmp_path_factory.mktemp("search"), "digits")


@pytest.fixture(scope="module")
def store(home: Settings) -> Iterator[Store]:
    s = Store.open(home)
    yield s
    s.close()


@pytest.fixture(scope="module")
def searched(home: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    space = tmp_path_factory.mktemp("space") / "space.yaml"
    space.write_text(SPACE)
    out = cli(home, "tune", str(EXAMPLES / "digits.yaml"), "--space", str(space),
              "--trials", "8", "--parallel", "2", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def test_tune_finds_a_config_at_least_as_good_as_the_example_and_prunes(
        home: Settings, store: Store, searched: dict[str, Any]) -> None:
    baseline = fit(parse_config(example("digits", name="digits-example")), home, store=store)
    best = store.meta.model_version("digits", searched["version"])
    print(f"\nsearch {searched['states']}: best trial {searched['best']['trial']} "
          f"{searched['best']['params']} val {searched['best']['value']:.4f}, test "
          f"{best.metrics['accuracy']:.4f}; examples/digits.yaml test "
          f"{baseline.metrics['accuracy']:.4f}")
    assert best.metrics["accuracy"] >= baseline.metrics["accuracy"]
    assert searched["states"]["PRUNED"] >= 1
    assert sum(searched["states"].values()) == 8
    lineage = best.spec["lineage"]["extra"]["search"]
    assert lineage["id"] == searched["search"] and lineage["trials"] == 8
    assert lineage["run_id"] == best.run_id
    assert store.meta.aliases("digits")["candidate"] == best.version
    assert len(store.meta.model_versions("digits")) == 1  # only the winner is registered
    statuses = sorted(r.status for r in store.meta.runs("digits"))
    assert statuses.count("pruned") == searched["states"]["PRUNED"]


def test_tune_show_lists_the_searches_and_the_trials(home: Settings,
                                                     searched: dict[str, Any]) -> None:
    listed = json.loads(cli(home, "tune", "show", "--json").stdout)
    assert [s["search"] for s in listed] == [searched["search"]]
    out = cli(home, "tune", "show", searched["search"], "--json")
    trials = json.loads(out.stdout)["trials"]
    assert [t["trial"] for t in trials] == list(range(8))
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    assert all(t["run_id"] for t in trials)
    assert trials[0]["params"]["model.params.hidden"] == [256, 128]  # the config as given
    assert any(t["state"] == "PRUNED" and t["epochs"] < 40 for t in trials)


def test_an_empty_search_space_is_one_clear_error_and_registers_nothing(
        home: Settings, store: Store, tmp_path: Path, searched: dict[str, Any]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    before = len(store.meta.model_versions()), len(store.meta.runs(limit=1000))
    out = cli(home, "tune", str(EXAMPLES / "digits.yaml"), "--space", str(empty))
    assert out.returncode == 1
    said = " ".join(out.stderr.split())  # rich wraps the one line to the terminal
    assert said.startswith("error: search space") and "is empty: nothing to search" in said
    assert "Traceback" not in out.stderr
    assert (len(store.meta.model_versions()), len(store.meta.runs(limit=1000))) == before
