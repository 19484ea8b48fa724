"""Issue 13, bar 5: PostgreSQL restarted while serving and learning.

A server of the test's own (``tests.pg_private``) holds the metadata: the control plane's
lease (an advisory lock on its connection), the registry, the request log and the
learner's apply-once claims. The digits mlp follows ``production`` behind a gateway; a
bounded client predicts and sends feedback; a learner consumes it. The server is restarted
with a fast shutdown, which cuts every session. Then:

- serving never stopped: no prediction failed (replicas and gateways hold what they need);
- the control plane leads again (the lease is taken again on a new connection) and
  ``stratum scale`` works;
- the learner reconnected: every feedback the gateway accepted, before, during and after
  the restart, is applied exactly once (one claim each, none missing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.control.discovery import read_record
from stratum.online.demo import digits
from stratum.store import Store
from stratum.store.models import ProcessedMessage
from tests.integration.gateway_fixtures import stop_control_plane
from tests.integration.train_helpers import digits_in_production, settings_with
from tests.pg_private import PrivatePostgres, private_postgres
from tests.services import free_port

pytestmark = pytest.mark.integration

TUNING = {
    "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3",
    "STRATUM_GATEWAY__HEALTH_INTERVAL_S": "0.5",
    "STRATUM_ONLINE__MAX_WAIT_S": "1.0",
    "STRATUM_ONLINE__STEPS": "20",
    "STRATUM_ONLINE__UPDATE_EVERY": "40",
    "STRATUM_ONLINE__VISIBILITY_TIMEOUT_S": "3",
    "STRATUM_LOG_LEVEL": "WARNING",
}
CONSUMER = "learner:digits"


class Feedback:
    """Predict then label, from one thread, until stopped; keeps the request id of every
    feedback the gateway accepted and every failure of either call."""

    def __init__(self, url: str, images: Any, labels: Any) -> None:
        self.url, self.images, self.labels = url, images, labels
        self.accepted: list[str] = []
        self.predictions = 0
        self.failed: list[str] = []
        self.feedback_failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=15) as http:
            i = 0
            while not self._stop.is_set():
                img, label = self.images[i % len(self.images)], int(self.labels[i % len(
                    self.labels)])
                i += 1
                try:
                    r = http.post("/v1/models/digits:predict",
                                  json={"instances": [img.tolist()]})
                except httpx.HTTPError as exc:
                    self.failed.append(f"predict {type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self.failed.append(f"predict {r.status_code} {r.text[:200]}")
                    continue
                self.predictions += 1
                rid = r.headers["x-request-id"]
                try:
                    f = http.post("/v1/models/digits/feedback",
                                  json={"request_id": rid, "label": label})
                except httpx.HTTPError as exc:
                    self.feedback_failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                if f.status_code == 200:
                    self.accepted.append(rid)
                else:
                    self.feedback_failed.append(f"{f.status_code} {f.text[:200]}")
                time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with private_postgres() as pg:
        env = {**TUNING, "STRATUM_METADATA_URL": pg.url}
        home = tmp_path_factory.mktemp("pg-restart") / "home"
        settings = settings_with(home, env)
        store = Store.open(settings)
        digits_in_production(store, settings, epochs=5)
        images, labels = digits(store, "digits", "train")
        port = free_port()
        try:
            out = _cli(home, env, "deploy", "digits@production", "--follow", "--port",
                       str(port), "--json")
            assert out["status"] == "ready", out
            yield {"pg": pg, "env": env, "home": home, "settings": settings, "store": store,
                   "url": f"http://127.0.0.1:{port}", "images": images, "labels": labels}
        finally:
            store.close()
            stop_control_plane(settings)


def _cli(home: Path, env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, ["--home", str(home), *args], env=env)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return orjson.loads(result.stdout) if "--json" in args else result.stdout


def _why(log: Path) -> str:
    """Our frames of the learner's traceback, and how it ended."""
    text = log.read_text(errors="replace")
    ours = [line for line in text.splitlines() if "stratum/" in line and "File" in line]
    return "\n".join([*ours[-12:], text[-800:]])


def _applied(store: Store, ids: list[str]) -> tuple[int, int]:
    """(claims of these ids, distinct ids claimed) by the learner."""
    with store.meta.session() as s:
        rows = list(s.scalars(select(ProcessedMessage.key).where(
            ProcessedMessage.consumer == CONSUMER, ProcessedMessage.key.in_(ids))))
        total = int(s.scalar(select(func.count()).select_from(ProcessedMessage).where(
            ProcessedMessage.consumer == CONSUMER)) or 0)
    assert total >= len(rows)
    return len(rows), len(set(rows))


def test_serving_and_learning_survive_a_postgres_restart(system: dict[str, Any],
                                                         tmp_path: Path) -> None:
    pg: PrivatePostgres = system["pg"]
    store: Store = system["store"]
    log = tmp_path / "learner.log"
    learner = subprocess.Popen(
        [sys.executable, "-m", "stratum.cli.main", "--home", str(system["home"]), "learn",
         "digits"], env={**os.environ, **system["env"]}, stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    load = Feedback(system["url"], system["images"], system["labels"])
    try:
        deadline = time.monotonic() + 60
        while len(load.accepted) < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(load.accepted) >= 60, (load.failed[:5], load.feedback_failed[:5])
        before = len(load.accepted)
        down = pg.restart()
        print(f"PostgreSQL was down {down:.2f} s")
        time.sleep(5)  # serving and feedback go on after it
        load.stop()
        assert load.failed == [], load.failed[:10]  # serving never stopped
        print(f"feedback refused while the database was away: {len(load.feedback_failed)}"
              f" {load.feedback_failed[:3]}")
        # Refused, if at all, as 503 to retry; never a 500 or a dropped connection.
        assert all(f.startswith("503") for f in load.feedback_failed), load.feedback_failed
        assert len(load.accepted) > before + 20, len(load.accepted)

        # The learner reconnected: every accepted feedback is applied, each once.
        ids = list(load.accepted)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                claims, distinct = _applied(store, ids)
            except Exception:  # the test's own pool may hold a cut connection once
                continue
            if claims >= len(ids):
                break
            assert learner.poll() is None, _why(log)
            time.sleep(0.5)
        claims, distinct = _applied(store, ids)
        assert claims == distinct == len(set(ids)), (claims, distinct, len(ids),
                                                     log.read_text()[-3000:])
    finally:
        load.stop()
        learner.terminate()
        learner.wait(30)
    assert learner.returncode == 0, _why(log)

    # The control plane leads again and acts: scale, read back.
    rec = read_record(system["settings"])
    assert rec is not None
    out = _cli(system["home"], system["env"], "scale", "digits", "2", "--json")
    assert out["status"] == "ready" and len(out["replicas"]) == 2, out
    events = store.meta.events(subject="digits", kind="online.feedback", limit=1000)
    assert sum(e.payload["requests"] for e in events) == len(set(ids))
