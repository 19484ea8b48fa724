"""The queue under real concurrent and dying consumer processes, on both backends, and a
real Redis restarted while messages flow."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from stratum.queue import open_queue
from stratum.store import MetadataStore
from tests import queue_backends
from tests.services import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

queue_target = queue_backends.queue_target  # the fixture, parametrized over backends


def _consumer(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.queue_consumer", *args], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _lines(path: Path, tag: str) -> list[str]:
    if not path.exists():
        return []
    return [ln.split(" ", 1)[1] for ln in path.read_text().splitlines() if ln.startswith(tag)]


def test_two_consumer_processes_share_work_and_apply_once(
    queue_target: tuple[str, str], tmp_path: Path
) -> None:
    q = open_queue(*queue_target)
    keys = [f"k{i}" for i in range(60)]
    # 10 keys are sent twice without a dedupe key: the queue delivers both copies, the
    # consumers' ProcessedIds must apply each key once.
    ids = [q.put({"key": k}) for k in keys + keys[:10]]
    assert all(ids)
    meta_url = f"sqlite:///{tmp_path / 'meta.db'}"
    MetadataStore.open(meta_url).close()  # migrate once, before the race
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    procs = [_consumer("drain", *queue_target, n, str(o), meta_url)
             for n, o in zip("ab", outs, strict=True)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{o}.ready").exists() for o in outs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    (tmp_path / "go").touch()
    for p in procs:
        assert p.wait(60) == 0
    acked = [_lines(o, "acked") for o in outs]
    assert acked[0] and acked[1], "both consumers should have taken part"
    assert not set(acked[0]) & set(acked[1]), "a message was acked by both consumers"
    assert sorted(acked[0] + acked[1]) == sorted(ids)  # every message exactly once
    applied = _lines(outs[0], "applied") + _lines(outs[1], "applied")
    assert sorted(applied) == sorted(keys)  # every key applied exactly once
    assert q.size() == 0 and q.pending() == 0
    q.close()


def test_killed_consumer_messages_are_redelivered(
    queue_target: tuple[str, str], tmp_path: Path
) -> None:
    q = open_queue(*queue_target)
    ids = [q.put({"key": f"k{i}"}) for i in range(15)]
    out = tmp_path / "hang.txt"
    proc = _consumer("hang", *queue_target, "doomed", str(out))
    try:
        deadline = time.monotonic() + 30
        while not _lines(out, "leased") and time.monotonic() < deadline:
            time.sleep(0.05)
        leased = _lines(out, "leased")
        assert len(leased) == 10
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # The survivor gets the 5 never leased at once; the dead one's 10 after their lease.
    seen = {m.id: m for m in q.get(50, visibility_timeout_s=2.0, consumer="survivor")}
    assert set(seen) == set(ids) - set(leased)
    assert q.ack(list(seen)) == 5
    time.sleep(2.1)
    redelivered = q.get(50, visibility_timeout_s=2.0, consumer="survivor")
    assert {m.id for m in redelivered} == set(leased)
    assert all(m.attempts == 2 for m in redelivered)
    assert q.ack([m.id for m in redelivered]) == 10
    assert q.size() == 0
    q.close()


class _RedisServer:
    """A private redis-server with fsync-always AOF, so a restart keeps every write."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe, self.dir, self.port = exe, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no graceful save, only the AOF survives
            self.proc.wait(10)


def test_redis_restart_while_messages_flow_loses_nothing(tmp_path: Path) -> None:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.fail("redis-server is not installed; the restart test needs the binary")
    server = _RedisServer(exe, tmp_path)
    server.start()
    stream = f"test-{uuid.uuid4().hex[:8]}"
    try:
        producer_q = open_queue(server.url, stream)
        consumer_q = open_queue(server.url, stream)
        total, applied, errors, put_seconds = 200, [], [], []
        produced = threading.Event()

        def produce() -> None:
            try:
                for i in range(total):
                    t0 = time.monotonic()
                    assert producer_q.put({"seq": i}) is not None
                    put_seconds.append(time.monotonic() - t0)
                    time.sleep(0.005)
            except Exception as exc:
                errors.append(exc)
            produced.set()

        def consume() -> None:
            try:
                done: set[int] = set()
                while len(done) < total and not errors:
                    batch = consumer_q.get(20, visibility_timeout_s=1.0, consumer="c",
                                           wait_s=0.1)
                    for m in batch:
                        if m.payload["seq"] not in done:  # idempotent consumer
                            done.add(m.payload["seq"])
                            applied.append(m.payload["seq"])
                    consumer_q.ack([m.id for m in batch])
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # mid-flow
        server.kill()
        time.sleep(0.5)  # producer and consumer retry against a dead server
        server.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert produced.is_set()
        assert max(put_seconds) > 0.3, "no put waited out the outage: restart not exercised"
        assert sorted(applied) == list(range(total))  # none lost, none applied twice
        assert consumer_q.size() == 0
        producer_q.close()
        consumer_q.close()
    finally:
        server.kill()
