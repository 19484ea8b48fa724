"""The closed loop with real processes: a deployment that follows ``production``, feedback
through the gateway, the learner as a process of its own, a promotion the supervisor rolls
out — and the two ways it must not go wrong: a challenger fitted to noise is never
promoted, and a learner killed mid-batch neither loses nor double-applies feedback.

The model is the digits mlp (fast to train); the drift is inverted pixel intensities,
which the champion gets mostly wrong and a fine-tuned challenger learns quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings
from stratum.online.demo import digits
from stratum.online.learner import Learner
from stratum.store import Store
from stratum.store.models import ProcessedMessage
from tests.integration.gateway_fixtures import stop_control_plane
from tests.integration.train_helpers import digits_in_production, settings_with
from tests.services import free_port

pytestmark = pytest.mark.integration

TUNING = {
    "STRATUM_CONTROL__RECONCILE_INTERVAL_S": "0.3",
    "STRATUM_GATEWAY__HEALTH_INTERVAL_S": "0.5",
    "STRATUM_ONLINE__MAX_WAIT_S": "1.0",
    "STRATUM_ONLINE__STEPS": "60",
    "STRATUM_ONLINE__VISIBILITY_TIMEOUT_S": "3",
    "STRATUM_LOG_LEVEL": "WARNING",
}


class Loop:
    def __init__(self, home: Path, settings: Settings, port: int) -> None:
        self.home, self.settings, self.port = home, settings, port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.store = Store.open(settings)
        images, labels = digits(self.store, "digits", "train")
        self.images, self.labels = images, labels

    def cli(self, *args: str) -> Any:
        result = CliRunner().invoke(app, ["--home", str(self.home), *args], env=TUNING)
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        return orjson.loads(result.stdout) if "--json" in args else result.stdout

    def predict(self, image: np.ndarray) -> httpx.Response:
        r = self.http.post("/v1/models/digits:predict", json={"instances": [image.tolist()]})
        assert r.status_code == 200, r.text
        return r

    def feedback(self, doc: Any) -> httpx.Response:
        return self.http.post("/v1/models/digits/feedback", json=doc)

    def serve_and_label(self, images: np.ndarray, labels: np.ndarray) -> list[str]:
        """One prediction per image, then its label as feedback; returns request ids."""
        ids = []
        for img, label in zip(images, labels, strict=True):
            rid = self.predict(img).headers["x-request-id"]
            r = self.feedback({"request_id": rid, "label": int(label)})
            assert r.status_code == 200, r.text
            ids.append(rid)
        return ids

    def production(self) -> int:
        return self.store.meta.aliases("digits")["production"]

    def learner(self, log: Path, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "stratum.cli.main", "--home", str(self.home), "learn",
             "digits"], env={**os.environ, **TUNING, **env},
            stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)


def inverted(images: np.ndarray) -> np.ndarray:
    return 16.0 - images


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    home = tmp_path_factory.mktemp("loop") / "home"
    settings = settings_with(home, TUNING)
    store = Store.open(settings)
    digits_in_production(store, settings, epochs=15)
    store.close()
    lp = Loop(home, settings, free_port())
    try:
        out = lp.cli("deploy", "digits@production", "--follow", "--port", str(lp.port),
                     "--json")
        assert out["status"] == "ready", out
        yield lp
    finally:
        lp.store.close()
        stop_control_plane(settings)


def test_feedback_is_checked_and_deduplicated(loop: Loop) -> None:
    rid = loop.predict(loop.images[0]).headers["x-request-id"]
    label = int(loop.labels[0])
    first = loop.feedback({"request_id": rid, "label": label})
    assert first.status_code == 200 and first.json() == {"accepted": 1, "duplicates": 0}
    again = loop.feedback([{"request_id": rid, "label": label}])
    assert again.status_code == 200 and again.json() == {"accepted": 0, "duplicates": 1}

    unknown = loop.feedback({"request_id": "no-such-request", "label": 3})
    assert unknown.status_code == 404
    assert "no logged request 'no-such-request'" in unknown.json()["message"]
    not_a_class = loop.feedback({"request_id": rid, "label": 11})
    assert not_a_class.status_code == 422 and "not classes" in not_a_class.json()["message"]
    for bad in (b"{", b'{"label": 3}', b'[1, 2]', b'{"request_id": "x"}'):
        r = loop.http.post("/v1/models/digits/feedback", content=bad,
                           headers={"content-type": "application/json"})
        assert r.status_code == 400, (bad, r.text)


def test_a_challenger_fitted_to_noise_is_never_promoted(loop: Loop) -> None:
    """Shuffled labels on fresh traffic: the learner makes challengers from them, and
    the gate turns every one down; production stays where it was."""
    before = loop.production()
    versions = len(loop.store.meta.model_versions("digits"))
    rng = np.random.default_rng(7)
    sl = slice(0, 240)
    shuffled = rng.permutation(loop.labels[sl])
    loop.serve_and_label(loop.images[sl], shuffled)
    learner = Learner(loop.settings, loop.store, "digits")
    updates = []
    while (u := learner.drain(wait_s=1.0)) is not None:
        updates.append(u)
    assert updates, "the learner made no challenger from the shuffled feedback"
    assert not any(u.decision.promote for u in updates), [u.to_dict() for u in updates]
    assert loop.production() == before
    decisions = loop.store.meta.events(subject="digits", kind="online.decision")
    assert any(not e.payload["promote"] for e in decisions)
    # Rejected challengers stay run records (scores and decision), not versions.
    assert len(loop.store.meta.model_versions("digits")) == versions
    for u in updates:
        run = loop.store.meta.run(u.run_id)
        assert u.version is None and run.strategy == "online"
        assert run.summary["outcome"] == "rejected" and run.summary["version"] is None


def test_learner_process_promotes_and_the_deployment_follows(loop: Loop, tmp_path: Path
                                                             ) -> None:
    """Inverted digits: the champion is poor on them; the learner process fine-tunes,
    the gate promotes, the supervisor rolls the replicas, the gateway serves it."""
    before = loop.production()
    sl = slice(300, 700)
    x, y = inverted(loop.images[sl]), loop.labels[sl]
    served_before = [int(loop.predict(img).json()["predictions"][0]["class"]) for img in x[:100]]
    acc_before = float(np.mean(np.asarray(served_before) == y[:100]))
    proc = loop.learner(tmp_path / "learner.log")
    try:
        loop.serve_and_label(x, y)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and loop.production() == before:
            time.sleep(0.5)
        promoted = loop.production()
        assert promoted != before, (tmp_path / "learner.log").read_text()[-2000:]
        # The deployment follows production: wait until the gateway answers with it.
        version = None
        while time.monotonic() < deadline:
            r = loop.predict(x[0])
            version = int(r.headers["x-model-version"])
            if version >= promoted:
                break
            time.sleep(0.3)
        assert version is not None and version >= promoted
        fresh = inverted(loop.images[800:1000])
        answers = [int(loop.predict(img).json()["predictions"][0]["class"]) for img in fresh]
        acc_after = float(np.mean(np.asarray(answers) == loop.labels[800:1000]))
        assert acc_after > acc_before + 0.2, (acc_before, acc_after)
    finally:
        proc.terminate()
        proc.wait(20)
    history = loop.cli("models", "history", "digits", "--limit", "500", "--json")
    moves = [e["payload"] for e in history if e["kind"] == "alias.moved"]
    assert {"alias": "production", "version": promoted} in [
        {"alias": m["alias"], "version": m["version"]} for m in moves]
    assert any(e["kind"] == "online.decision" and e["payload"]["promote"] for e in history)
    follows = loop.store.meta.events(subject="digits", kind="deployment.follow")
    assert any(e.payload["to"] == promoted for e in follows)


def test_a_learner_killed_mid_batch_loses_and_repeats_nothing(loop: Loop,
                                                               tmp_path: Path) -> None:
    """The learner leases feedback but is killed before its update commits; the next
    learner gets the same messages after their lease and applies each exactly once."""
    sl = slice(1000, 1120)
    ids = loop.serve_and_label(loop.images[sl], loop.labels[sl])
    consumer = "learner:digits"

    def applied() -> int:
        with loop.store.meta.session() as s:
            return int(s.scalar(select(func.count()).select_from(ProcessedMessage).where(
                ProcessedMessage.consumer == consumer,
                ProcessedMessage.key.in_(ids))) or 0)

    log = tmp_path / "learner.log"
    # Big batch and long wait: it takes (leases) the feedback and sits on it.
    first = loop.learner(log, STRATUM_ONLINE__UPDATE_EVERY="100000",
                         STRATUM_ONLINE__MAX_WAIT_S="600")
    deadline = time.monotonic() + 60
    from stratum.queue import feedback_stream, open_queue

    assert loop.settings.queue_url
    queue = open_queue(loop.settings.queue_url, feedback_stream("digits"))
    try:
        while time.monotonic() < deadline and queue.pending() < len(ids):
            time.sleep(0.2)
        assert queue.pending() >= len(ids), log.read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    assert applied() == 0
    second = loop.learner(log)
    try:
        while time.monotonic() < deadline + 60 and (applied() < len(ids) or queue.size()):
            time.sleep(0.3)
    finally:
        second.terminate()
        second.wait(20)
    assert applied() == len(ids)
    assert queue.size() == 0
    events = loop.store.meta.events(subject="digits", kind="online.feedback", limit=1000)
    assert sum(e.payload["requests"] for e in events) == len(
        {m.key for m in _claims(loop, consumer)})
    queue.close()


def _claims(loop: Loop, consumer: str) -> list[ProcessedMessage]:
    with loop.store.meta.session() as s:
        return list(s.scalars(select(ProcessedMessage).where(
            ProcessedMessage.consumer == consumer)))


def test_rollback_of_a_following_deployment_pins_it_and_is_not_undone(loop: Loop) -> None:
    """The alias still names the newer version: following it would roll forward again at
    the next reconcile. Rollback pins instead, says so, and stays; --follow follows again."""
    production = loop.production()
    deadline = time.monotonic() + 30  # the spec follows the latest promotion first
    while loop.store.meta.deployment("digits").spec["version"] != production:
        assert time.monotonic() < deadline, loop.store.meta.deployment("digits").spec
        time.sleep(0.2)
    back = loop.cli("rollback", "digits", "--json")
    assert back["notice"] and "no longer follows digits@production" in back["notice"]
    assert back["follows"] is None
    previous = loop.store.meta.deployment("digits").spec["version"]
    assert previous != production
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if int(loop.predict(loop.images[0]).headers["x-model-version"]) == previous:
            break
        time.sleep(0.3)
    # Many reconcile intervals later (0.3 s each) it still serves the version rolled back to.
    time.sleep(3.0)
    served = {int(loop.predict(img).headers["x-model-version"]) for img in loop.images[:30]}
    assert served == {previous}
    assert loop.store.meta.deployment("digits").spec["follow"] is None
    again = loop.cli("deploy", "digits@production", "--follow", "--json")
    assert again["follows"] == "production" and not again.get("notice")
    served = {int(loop.predict(img).headers["x-model-version"]) for img in loop.images[:10]}
    assert served == {production}


def test_stop_stops_the_learner_too_and_a_second_learner_is_refused(loop: Loop,
                                                                    tmp_path: Path) -> None:
    """`stratum stop` stops the home's learners with its control plane (a learner left by
    a SIGKILLed `stratum up` used to run on); two learners of one model never run."""
    log = tmp_path / "learner.log"
    proc = loop.learner(log)
    try:
        lock = loop.home / "learners" / "digits.lock"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                lock.exists() and lock.read_text().strip() == str(proc.pid)):
            time.sleep(0.2)
        assert lock.read_text().strip() == str(proc.pid), log.read_text()[-2000:]
        second = CliRunner().invoke(app, ["--home", str(loop.home), "learn", "digits"],
                                    env=TUNING)
        assert second.exit_code != 0
        assert "already runs" in str(second.exception) and str(proc.pid) in str(
            second.exception)
        out = loop.cli("stop")
        assert "the control plane" in out and f"the learner of digits (pid {proc.pid})" in out
        assert proc.wait(5) == 0  # it finished and exited cleanly on SIGTERM
        again = CliRunner().invoke(app, ["--home", str(loop.home), "stop"], env=TUNING)
        assert again.exit_code != 0 and "nothing to stop" in str(again.exception)
    finally:
        if proc.poll() is None:
            proc.kill()
