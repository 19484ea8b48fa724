"""Capture of served inputs for the feedback join, kept off the request's hot path.

A replica calls ``add`` as it answers (a list append); a background task calls ``flush``
every few milliseconds from a worker thread, which writes the buffered requests to the
request log in one transaction. The buffer is bounded: under a sustained write stall the
oldest captures are dropped (and counted), never the requests themselves.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from stratum.errors import StoreUnavailableError
from stratum.store.models import utcnow
from stratum.store.requests import LoggedRequest, RequestLog


class InputCapture:
    """Buffered writer of ``(request id, inputs, prediction)`` into a ``RequestLog``."""

    def __init__(self, log: RequestLog, model: str, *,
                 feature_names: Sequence[str] | None = None, max_buffer: int = 50_000) -> None:
        self.log, self.model = log, model
        self.feature_names = list(feature_names) if feature_names else None
        self._buf: deque[LoggedRequest] = deque(maxlen=max_buffer)
        self._flush_lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    def add(self, request_id: str, version: int | None, inputs: Any, prediction: Any) -> None:
        if not self.log.sampled(request_id):
            return
        if len(self._buf) == self._buf.maxlen:
            self.dropped += 1
        self._buf.append(LoggedRequest(request_id, self.model, version, inputs, prediction,
                                       utcnow()))

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def flush(self) -> int:
        """Write what is buffered; returns rows written. Thread-safe, one writer at a time."""
        with self._flush_lock:
            batch = []
            while self._buf:
                batch.append(self._buf.popleft())
            if not batch:
                return 0
            try:
                n = self.log.log_many(batch, feature_names=self.feature_names)
            except StoreUnavailableError:
                # A passing lock or a restarting database: put them back in front and try
                # again next flush.
                self._buf.extendleft(reversed(batch))
                raise
            except Exception:
                # Rows that cannot be stored at all must not block every later flush.
                self.dropped += len(batch)
                raise
            self.written += n
            return n
