"""`stratum chaos` against a real deployment (a tiny registered mlp, 2 replicas behind
2 gateways, real processes), run as a user runs it: the CLI in a process of its own.

- replica SIGKILL, gateway SIGTERM and SIGKILL, control-plane SIGKILL: every scenario
  recovers, within its bar of failed requests, under the command's own load; the control
  plane that comes back adopted the same processes;
- two replicas SIGKILLed at once (--gap 0): nothing serves until a replacement is ready,
  so requests fail, the scenario fails its bar of 0 and the command exits 1;
- scenarios that cannot run here (one registered version; no learner; services not
  asked for) are skipped with the reason, and an unknown one is refused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.discovery import read_record
from stratum.store import Store
from tests.integration.gateway_fixtures import TUNING, register_tiny, stop_control_plane
from tests.services import free_port

pytestmark = pytest.mark.integration

CONCURRENCY = 8


class Deployed:
    def __init__(self, home: Path, settings: Settings) -> None:
        self.home, self.settings = home, settings
        self.groups: set[int] = set()

    def chaos(self, *args: str, timeout: float = 150) -> tuple[int, dict[str, Any], str]:
        """``stratum chaos tiny ARGS --json`` in its own process: (exit code, document,
        stderr)."""
        rec = read_record(self.settings)
        if rec is not None:
            self.groups.add(int(rec["pid"]))
        env = {**os.environ, **TUNING}
        env.pop("STRATUM_SETTINGS_JSON", None)
        out = subprocess.run(
            [sys.executable, "-m", "stratum.cli.main", "--home", str(self.home), "chaos",
             "tiny", "--concurrency", str(CONCURRENCY), "--json", *args],
            env=env, capture_output=True, text=True, timeout=timeout)
        rec = read_record(self.settings)
        if rec is not None:
            self.groups.add(int(rec["pid"]))
        try:
            doc = orjson.loads(out.stdout)
        except orjson.JSONDecodeError:
            doc = {}
        return out.returncode, doc, out.stderr


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    home = tmp_path_factory.mktemp("chaos") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TUNING.items():
            mp.setenv(k, v)
        settings = load_settings(home=home)
    store = Store.open(settings)
    assert register_tiny(store, seed=1) == 1
    store.close()
    d = Deployed(home, settings)
    try:
        result = CliRunner().invoke(app, ["--home", str(home), "deploy", "tiny@1",
                                          "--replicas", "2", "--gateways", "2", "--port",
                                          str(free_port()), "--json"], env=TUNING)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        yield d
    finally:
        rec = read_record(settings, check_alive=False)
        if rec is not None:
            d.groups.add(int(rec["pid"]))
        stop_control_plane(settings)
        for g in d.groups:  # adopted processes stay in the first control plane's group
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["scenario"]: s for s in doc["scenarios"]}


def test_faults_under_load_recover_within_their_bars(deployed: Deployed) -> None:
    pid_before = read_record(deployed.settings)["pid"]  # type: ignore[index]
    code, doc, err = deployed.chaos(
        "--scenarios", "replica-kill,gateway-term,gateway-kill,control-kill",
        "--duration", "3", "--timeout", "45")
    assert doc, err[-3000:]
    got = _by_name(doc)
    print({k: (v["requests"], v["failed"], v["recover_s"]) for k, v in got.items()})
    assert list(got) == ["replica-kill", "gateway-term", "gateway-kill", "control-kill"]
    bars = {"replica-kill": 0, "gateway-term": 0, "gateway-kill": CONCURRENCY,
            "control-kill": 0}
    for name, s in got.items():
        assert s["status"] == "passed", s
        assert s["bar"] == bars[name]
        assert s["failed"] <= s["bar"], s
        assert s["requests"] > 100, s
        assert s["recover_s"] is not None and 0 < s["recover_s"] < 45, s
    assert code == 0 and doc["passed"] is True
    assert sum(s["requests"] for s in got.values()) > 0
    # The control plane was really killed, and the one that leads now adopted the same
    # replicas and gateways.
    rec = read_record(deployed.settings)
    assert rec is not None and rec["pid"] != pid_before
    assert "(the same processes)" in got["control-kill"]["note"], got["control-kill"]


def test_two_replicas_killed_at_once_fail_the_bar_and_the_exit_code(
        deployed: Deployed) -> None:
    code, doc, err = deployed.chaos("--scenarios", "replica-kill-2", "--gap", "0",
                                    "--duration", "2", "--timeout", "45")
    assert doc, err[-3000:]
    s = _by_name(doc)["replica-kill-2"]
    # Nothing served between the kills and the first replacement: failures, counted.
    assert s["status"] == "failed" and s["failed"] > 0 and s["bar"] == 0, s
    assert s["recover_s"] is not None, s  # it did come back
    assert any("503" in e or "Error" in e for e in s["errors"]), s
    assert code == 1 and doc["passed"] is False


def test_what_cannot_run_here_is_skipped_with_the_reason(deployed: Deployed) -> None:
    code, doc, err = deployed.chaos(
        "--scenarios", "rolling-update,learner-kill,redis-restart,postgres-restart",
        "--duration", "1")
    assert doc, err[-3000:]
    got = _by_name(doc)
    assert {s["status"] for s in got.values()} == {"skipped"}, got
    assert "second registered version" in got["rolling-update"]["note"]
    assert "stratum learn tiny" in got["learner-kill"]["note"]
    assert "does not use this machine's Redis" in got["redis-restart"]["note"]
    assert "PostgreSQL" in got["postgres-restart"]["note"]
    assert code == 0  # skipped is not passed, and not failed either
    bad = subprocess.run([sys.executable, "-m", "stratum.cli.main", "--home",
                          str(deployed.home), "chaos", "tiny", "--scenarios", "nope"],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items()
                              if k != "STRATUM_SETTINGS_JSON"})
    assert bad.returncode == 1 and "unknown scenario(s) nope" in bad.stderr, bad.stderr
