"""The feedback the learner holds: each request's logged inputs joined with its labels
(``join`` → ``Row``), the requests taken from the queue and not yet committed
(``Pending``), and the recent rows kept across updates (``FeedbackWindow``) that a
challenger is fine-tuned on and judged on."""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from stratum.data.signature import Signature
from stratum.store import ModelSpec
from stratum.store.requests import LoggedRequest


@dataclass
class Row:
    request_id: str
    x: np.ndarray  # model-ready inputs of the request (one row per instance)
    y: np.ndarray  # class indices or values
    held_out: bool  # kept out of fine-tuning; the gate judges on it


def held_out(request_id: str, eval_every: int) -> bool:
    """One request in ``eval_every`` is kept out of fine-tuning. A hash of the id, not a
    random draw, so a redelivered request lands on the same side as before."""
    return zlib.crc32(request_id.encode()) % eval_every == 0


def join(request_id: str, labels: Any, logged: LoggedRequest, signature: Signature,
         spec: ModelSpec, eval_every: int) -> Row:
    """The request's logged inputs, model-ready, with the labels its feedback gave.

    Raises ``StratumError``, ``KeyError``, ``ValueError`` or ``TypeError`` when the two do
    not fit the model (inputs off its signature, an unknown class, a count mismatch)."""
    instances = logged.instances
    x = signature.from_instances(instances)
    if spec.task == "classification":
        index = {str(c): i for i, c in enumerate(spec.classes or [])}
        y = np.asarray([index[str(v)] for v in labels], dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.float32)
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} instances")
    return Row(request_id, x, y, held_out(request_id, eval_every))


class Pending:
    """Feedback taken and not yet committed, by request id: its joined row (None when the
    request could not be used) and the id of every message that carried it, to ack."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Row | None, list[str]]] = {}
        self.since: float | None = None  # monotonic time the oldest request arrived

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._items

    def add(self, request_id: str, row: Row | None, msg_ids: list[str]) -> None:
        self._items[request_id] = (row, msg_ids)
        if self.since is None:
            self.since = time.monotonic()

    def redelivered(self, request_id: str, msg_id: str) -> None:
        """Our own lease on a message ran out and it came back: the same row, one more
        message to ack."""
        self._items[request_id][1].append(msg_id)

    def request_ids(self) -> list[str]:
        return list(self._items)

    def message_ids(self) -> list[str]:
        return [i for _, ids in self._items.values() for i in ids]

    def usable(self) -> list[Row]:
        """The joined rows, in the order their requests arrived."""
        return [r for r, _ in self._items.values() if r is not None]

    def rows(self, request_ids: Iterable[str] | None = None) -> int:
        """Feedback rows (one per instance) of the usable requests, or of those named."""
        keys = self._items if request_ids is None else request_ids
        return sum(len(r.y) for k in keys if (r := self._items[k][0]) is not None)


class FeedbackWindow:
    """The most recent feedback rows, at most ``max_rows`` instances; the newest request is
    kept whatever its size, so there is always something to learn from."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = 0  # instances held
        self._requests: deque[Row] = deque()

    def extend(self, rows: Iterable[Row]) -> None:
        for r in rows:
            self._requests.append(r)
            self.rows += len(r.y)
        while self.rows > self.max_rows and len(self._requests) > 1:
            self.rows -= len(self._requests.popleft().y)

    def split(self) -> tuple[list[Row], list[Row]]:
        """(rows to fine-tune on, held-out rows the gate judges on)."""
        return ([r for r in self._requests if not r.held_out],
                [r for r in self._requests if r.held_out])


__all__ = ["FeedbackWindow", "Pending", "Row", "held_out", "join"]
