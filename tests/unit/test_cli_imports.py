"""The CLI starts without torch: commands that never train (status, logs, stop, keys,
models, deploy, --help) must not import torch, the trainer or the model zoo. Each check
runs a fresh interpreter, since this test process may have imported them already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STRATUM = str(Path(sys.executable).with_name("stratum"))
# Modules only the commands that train, tune, compress, learn or demo may import.
HEAVY = ("torch", "stratum.train.fit", "stratum.train.loop", "stratum.models.zoo",
         "stratum.online.learner", "stratum.compress.passes")

PROBE = ("import importlib, json, sys\n"
         "importlib.import_module(sys.argv[1])\n"
         "print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))\n")


def heavy_after_import(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, module, *HEAVY],
                         capture_output=True, text=True, timeout=120, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize("module", ["stratum.cli.main", "stratum.cli.serving",
                                    "stratum.cli.status", "stratum.cli.logs",
                                    "stratum.cli.models", "stratum.cli.data"])
def test_light_cli_modules_do_not_import_torch(module: str) -> None:
    assert heavy_after_import(module) == []


def test_the_probe_sees_torch_when_it_is_imported() -> None:
    # The same probe on the trainer: an empty list above means absent, not unseen.
    assert {"torch", "stratum.train.fit"} <= set(heavy_after_import("stratum.train.fit"))


@pytest.mark.parametrize(("package", "name"), [("stratum.train", "fit"),
                                                ("stratum.data", "ingest")])
def test_a_lazy_export_named_like_its_module_stays_the_export(package: str, name: str) -> None:
    """``stratum.train.fit`` is a module and ``fit`` its function: once anything imports the
    module, ``from stratum.train import fit`` must still give the function."""
    probe = (f"import {package}.{name}\nfrom {package} import {name}\n"
             f"print(callable({name}) and not hasattr({name}, '__file__'))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "True", out.stdout + out.stderr


def run_stratum(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``stratum`` executable, with Python's import log on stderr."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([STRATUM, *args], capture_output=True, text=True, timeout=120,
                          env=env)


def imported(stderr: str) -> set[str]:
    # "import time: self [us] | cumulative | imported package", one line per module.
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize(("args", "expected"), [
    (("--help",), ["train", "tune", "compress", "deploy", "status", "logs", "learn", "up"]),
    (("status", "--help"), ["--json", "Show datasets, models, deployments"]),
    (("train", "--help"), ["--gpus-per-worker", "--strategy", "--resume"]),
])
def test_help_works_without_torch(args: tuple[str, ...], expected: list[str]) -> None:
    out = run_stratum(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    for text in expected:
        assert text in out.stdout, (text, out.stdout)
    modules = imported(out.stderr)
    assert "stratum.cli.main" in modules  # the log is there, so absence below means absent
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_status_of_an_empty_home_runs_without_torch(tmp_path: Path) -> None:
    out = run_stratum("--home", str(tmp_path / "home"), "status")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "control plane: not running" in out.stdout
    modules = imported(out.stderr)
    assert "sqlalchemy" in modules  # it did open the store
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
