"""The queue contract shared by both backends: at-least-once delivery with leases.

A consumer ``get``s a batch, which leases the messages; it processes them and then
``ack``s. A message not acked within the visibility timeout is delivered again (to any
consumer), so nothing is lost when a consumer dies mid-batch. The timeout is the
*reader's*: a ``get`` with ``visibility_timeout_s=T`` also takes messages delivered more
than ``T`` seconds ago and not acked (Redis' XAUTOCLAIM min-idle semantics, shared by
both backends), so the consumers of one stream should use the same timeout.

Effects must therefore be idempotent; ``stratum.store.ProcessedIds`` helps
consumers apply each message once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Message:
    """One delivered message. ``attempts`` counts deliveries, this one included."""

    id: str
    payload: dict[str, Any]
    attempts: int


@runtime_checkable
class Queue(Protocol):
    """A durable stream of JSON messages with leases, acks and producer-side dedupe."""

    stream: str

    def put(self, payload: dict[str, Any], dedupe_key: str | None = None) -> str | None:
        """Enqueue ``payload``; returns its id, or None when ``dedupe_key`` was seen."""
        ...

    def get(
        self, max_items: int = 64, visibility_timeout_s: float = 30.0,
        consumer: str = "default", wait_s: float = 0.0,
    ) -> list[Message]:
        """Lease up to ``max_items`` messages; waits up to ``wait_s`` for the first."""
        ...

    def ack(self, ids: Sequence[str]) -> int:
        """Mark messages done; returns how many were still outstanding."""
        ...

    def pending(self) -> int:
        """Messages delivered at least once and not yet acked (leased or lease expired)."""
        ...

    def size(self) -> int:
        """Messages not yet acked (waiting or leased)."""
        ...

    def close(self) -> None: ...
