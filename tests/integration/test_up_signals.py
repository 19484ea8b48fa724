"""`stratum up` treats SIGTERM like Ctrl-C: it stops the learner, the deployment and the
control plane it started, and leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from stratum.config import load_settings
from stratum.control.discovery import read_record
from tests.services import free_port

pytestmark = pytest.mark.integration


def _ours(home: Path) -> list[int]:
    """Pids of processes started for ``home``: its path is in their settings (environment)
    or on their command line."""
    needle = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes() or \
                    needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return found


def test_sigterm_stops_everything_up_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "mnist-quick.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "mnist@latest", "model": {"name": "mlp", "params": {"hidden": [32]}},
        "batch_size": 64, "epochs": 1, "seed": 0}))
    log = tmp_path / "up.log"
    env = {**os.environ, "STRATUM_LOG_LEVEL": "WARNING",
           "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stratum.cli.main", "--home", str(home), "up",
             "--port", str(free_port()), "--replicas", "1", "--workers", "1",
             "--train-config", str(config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while b"Stratum is up" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # The dashboard `up` prints is served by the control plane it started.
        shown = re.search(rb"dashboard (https?://\S+/ui/)", log.read_bytes())
        assert shown is not None, log.read_text()[-3000:]
        r = httpx.get(shown.group(1).decode(), timeout=10)
        assert r.status_code == 303 and "/ui/login" in r.headers["location"], r
        time.sleep(2.0)  # the learner is running
        running = _ours(home)
        assert len(running) >= 4, running  # up, control plane, gateway, replica, learner
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        assert "stopped the learner, the deployment and the control plane" in log.read_text()
        deadline = time.monotonic() + 20
        while _ours(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ours(home) == [], log.read_text()[-2000:]
        # No live control plane is recorded (a stale control.json names a dead pid).
        assert read_record(load_settings(home=home)) is None
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _ours(home):
            os.kill(pid, signal.SIGKILL)
