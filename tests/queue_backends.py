"""Queue fixtures shared by the queue tests: each backend on a fresh, private stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _stream() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "redis"])
def queue_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(url, stream)`` of an empty queue; the Redis stream is deleted afterwards."""
    stream = _stream()
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.db'}", stream
        return
    url = request.getfixturevalue("redis_url")
    yield url, stream
    from stratum.queue.redis_streams import RedisStreamsQueue

    q = RedisStreamsQueue(url, stream)
    q.delete()
    q.close()
