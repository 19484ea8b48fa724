"""The durable feedback/event queue: one Protocol, two backends chosen by URL.

>>> q = open_queue("sqlite:////tmp/stratum-doctest-queue.db", stream="doctest")
>>> isinstance(q, Queue)
True
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from stratum.errors import ConfigError
from stratum.queue.base import Message, Queue
from stratum.security.names import validate_name


def open_queue(url: str, stream: str = "feedback", *,
               dedupe_ttl_s: float = 7 * 24 * 3600) -> Queue:
    """Open ``stream`` on the queue at ``url``.

    ``sqlite:///PATH`` is the embedded default (the file is created; as in SQLAlchemy,
    ``sqlite:////abs/queue.db`` is absolute and ``sqlite:///rel/queue.db`` relative);
    ``redis://host:port/db[?group=NAME]`` (or ``rediss://``) uses Redis Streams with the
    consumer group ``NAME`` (default ``stratum``).
    """
    validate_name(stream, "queue stream name")
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"invalid queue URL {url!r}", hint="use sqlite:///PATH/queue.db")
        from stratum.queue.sqlite import SqliteQueue

        return SqliteQueue(Path(path), stream, dedupe_ttl_s=dedupe_ttl_s)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from stratum.queue.redis_streams import RedisStreamsQueue
        except ImportError as exc:  # the redis extra is optional
            raise ConfigError(
                f"queue URL {url!r} needs the redis package", hint="pip install 'stratum[redis]'"
            ) from exc
        return RedisStreamsQueue(url, stream, dedupe_ttl_s=dedupe_ttl_s)
    raise ConfigError(
        f"unsupported queue URL {url!r}", hint="use sqlite:///PATH/queue.db or redis://HOST:PORT/0"
    )


def feedback_stream(model: str) -> str:
    """The queue stream that carries ``model``'s feedback: the replica's intake produces on
    it, the online learner consumes it."""
    return f"feedback-{model}"


__all__ = ["Message", "Queue", "feedback_stream", "open_queue"]
