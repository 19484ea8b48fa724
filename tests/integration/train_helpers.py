"""Shared set-up for the training tests: a Stratum home with real built-in datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stratum.config import Settings, load_settings
from stratum.data import ingest
from stratum.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def home_with(tmp: Path, *datasets: str) -> Settings:
    settings = load_settings(home=tmp / "home")
    store = Store.open(settings)
    try:
        for name in datasets:
            ingest(f"builtin:{name}", name, store)
    finally:
        store.close()
    return settings


def example(file: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{file}.yaml").read_text())
    doc.update(changes)
    return doc


def settings_with(home: Path, env: dict[str, str]) -> Settings:
    """Settings for ``home`` as a process started with ``env`` would load them."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        return load_settings(home=home)


def digits_in_production(store: Store, settings: Settings, **config: Any) -> int:
    """Ingest builtin:digits, train its mlp (``config`` changes examples/digits.yaml) and make
    the version ``production``; returns the version."""
    from stratum.train import fit, parse_config

    ingest("builtin:digits", "digits", store)
    mv = fit(parse_config(example("digits", **config)), settings, store=store)
    store.meta.set_alias("digits", "production", mv.version)
    return mv.version


def kill_mid_epoch(store: Store, home: Settings, name: str, pid_index: int = 1,
                   epoch: float = 2.5) -> tuple[Any, dict[str, int]]:
    """A progress callback that SIGKILLs the process ``pid_index`` (in launch order: ranks,
    then any servers) of the running run of model ``name`` once training passes ``epoch``
    epochs, on the first attempt; and the dict it fills with ``step`` and ``pid``."""
    import os
    import signal

    from stratum.train import Progress
    from stratum.train.launcher import run_dir, worker_pids

    killed: dict[str, int] = {}

    def callback(p: Progress) -> None:
        if killed or p.phase != "train" or p.attempt != 0 or not p.epochs:
            return
        if p.step < epoch * (p.total_steps // p.epochs):
            return
        (run,) = [r for r in store.meta.runs(name) if r.status == "running"]
        pids = worker_pids(run_dir(home, run.id))
        os.kill(pids[pid_index], signal.SIGKILL)
        killed.update(step=p.step, pid=pids[pid_index])

    return callback, killed
