"""The queue contract, run against both backends (SQLite file, the machine's Redis)."""

from __future__ import annotations

import time

import pytest

from stratum.errors import ConfigError, InvalidNameError, QueueError
from stratum.queue import Queue, open_queue
from tests import queue_backends

queue_target = queue_backends.queue_target  # the fixture, parametrized over backends


def test_put_get_ack(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target)
    assert isinstance(q, Queue)
    ids = [q.put({"n": i}) for i in range(5)]
    assert all(ids) and len(set(ids)) == 5
    assert q.size() == 5 and q.pending() == 0
    got = q.get(max_items=3, visibility_timeout_s=30)
    assert [m.payload["n"] for m in got] == [0, 1, 2]  # FIFO
    assert [m.id for m in got] == ids[:3] and all(m.attempts == 1 for m in got)
    assert q.pending() == 3
    rest = q.get(max_items=10, visibility_timeout_s=30)
    assert [m.payload["n"] for m in rest] == [3, 4]
    assert q.get(max_items=10, visibility_timeout_s=30) == []  # all leased
    assert q.ack([m.id for m in got + rest]) == 5
    assert q.ack([got[0].id]) == 0  # acking twice is harmless
    assert q.size() == 0 and q.pending() == 0
    q.close()


# Long enough that a loaded 2-core CI box does not see leases expire between two calls.
VT = 0.6


def test_redelivery_after_visibility_timeout(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target)
    q.put({"n": 1})
    q.put({"n": 2})
    first = q.get(10, visibility_timeout_s=VT, consumer="a")
    assert len(first) == 2
    assert q.get(10, visibility_timeout_s=VT, consumer="b") == []  # still leased
    time.sleep(VT + 0.1)
    again = q.get(10, visibility_timeout_s=VT, consumer="b")
    assert sorted(m.payload["n"] for m in again) == [1, 2]
    assert all(m.attempts == 2 for m in again)
    assert {m.id for m in again} == {m.id for m in first}
    q.ack([m.id for m in again])
    time.sleep(VT + 0.1)
    assert q.get(10, visibility_timeout_s=VT) == [] and q.size() == 0
    q.close()


def test_dedupe_key(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target)
    assert q.put({"label": 3}, dedupe_key="req-1") is not None
    assert q.put({"label": 3}, dedupe_key="req-1") is None
    assert q.put({"label": 4}, dedupe_key="req-2") is not None
    got = q.get(10, 30)
    q.ack([m.id for m in got])
    # The key outlives the message: feedback sent again after processing is still a repeat.
    assert q.put({"label": 3}, dedupe_key="req-1") is None
    assert [m.payload["label"] for m in got] == [3, 4]
    q.close()


def test_dedupe_key_expires(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target, dedupe_ttl_s=1)
    assert q.put({"x": 1}, dedupe_key="k") is not None
    assert q.put({"x": 1}, dedupe_key="k") is None
    time.sleep(1.2 if queue_target[0].startswith("sqlite") else 2.1)
    assert q.put({"x": 1}, dedupe_key="k") is not None
    q.close()


def test_wait_returns_early_when_a_message_arrives(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target)
    t0 = time.monotonic()
    assert q.get(5, 30, wait_s=0.3) == []
    assert time.monotonic() - t0 >= 0.25
    q.put({"n": 1})
    t0 = time.monotonic()
    assert len(q.get(5, 30, wait_s=5)) == 1
    assert time.monotonic() - t0 < 2
    q.close()


def test_bad_input_is_a_clear_error(queue_target: tuple[str, str]) -> None:
    q = open_queue(*queue_target)
    with pytest.raises(QueueError, match="JSON object"):
        q.put(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(QueueError, match="JSON-serialisable"):
        q.put({"x": object()})
    with pytest.raises(QueueError, match="max_items"):
        q.get(0)
    q.close()


def test_open_queue_rejects_unknown_urls() -> None:
    with pytest.raises(ConfigError, match="unsupported queue URL"):
        open_queue("kafka://localhost:9092")
    with pytest.raises(InvalidNameError):
        open_queue("sqlite:////tmp/q.db", stream="../evil")
