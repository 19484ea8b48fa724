"""The replica's side of the learning loop: served inputs go to the request log, feedback
goes to the durable queue.

The capture buffers inputs as requests are answered; a background task writes them every
``online.capture_flush_ms`` from a worker thread. Feedback is checked against that log
(``FeedbackIntake``) and enqueued for the online learner; the queue opens at the first
feedback, so a replica that never gets any never connects to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from stratum.config import Settings
from stratum.queue import Queue, feedback_stream, open_queue
from stratum.serve.capture import InputCapture
from stratum.serve.feedback import FeedbackIntake, FeedbackItem, FeedbackResult
from stratum.serve.traces import CaptureTraces
from stratum.store.metadata import MetadataStore
from stratum.store.requests import RequestLog

log = logging.getLogger(__name__)


class Intake:
    """Input capture (when ``online.log_sample_rate`` > 0) and feedback for ``model``."""

    def __init__(self, settings: Settings, meta: MetadataStore, model: str,
                 traces: CaptureTraces | None = None) -> None:
        self.model = model
        self.traces = traces  # with tracing on: each write is a span
        self.request_log = RequestLog.from_settings(settings, meta)
        self.capture = (InputCapture(self.request_log, model)
                        if settings.online.log_sample_rate > 0 else None)
        self._flush_s = settings.online.capture_flush_ms / 1000
        self._queue_url = settings.queue_url
        self._queue: Queue | None = None
        self._flusher: asyncio.Task[None] | None = None

    def start(self, feature_names: list[str] | None) -> None:
        """Start flushing captures (on the event loop); rows are logged under these names."""
        if self.capture is not None:
            self.capture.feature_names = feature_names
            self._flusher = asyncio.create_task(self._flush_loop())

    def traced(self, request_id: str) -> None:
        """The request just captured was traced: link the write that stores it."""
        if self.traces is not None:
            self.traces.add(request_id)

    def _flush(self) -> int:
        assert self.capture is not None
        if self.traces is None:
            return self.capture.flush()
        return self.traces.write(self.capture.flush)

    def stop(self) -> None:
        """Stop the periodic flush; ``close`` writes what is left."""
        if self._flusher is not None:
            self._flusher.cancel()

    async def close(self) -> None:
        if self.capture is not None:
            await asyncio.to_thread(self._flush)  # nothing served goes unlogged
        if self._queue is not None:
            self._queue.close()

    async def _flush_loop(self) -> None:
        assert self.capture is not None
        while True:
            await asyncio.sleep(self._flush_s)
            if self.capture.buffered:
                try:
                    await asyncio.to_thread(self._flush)
                except Exception:  # a locked store: keep the rows, try again next tick
                    log.exception("could not write %d captured requests",
                                  self.capture.buffered)

    async def feedback(self, items: Sequence[FeedbackItem],
                       classes: Sequence[Any] | None) -> FeedbackResult:
        """Check ``items`` against the request log and enqueue them (all or none)."""
        if self._queue is None:
            assert self._queue_url
            self._queue = await asyncio.to_thread(open_queue, self._queue_url,
                                                  feedback_stream(self.model))
        intake = FeedbackIntake(self.model, self.request_log, self._queue, classes)
        logged = await asyncio.to_thread(intake.lookup, items)
        if len(logged) < len(items) and self.capture is not None:
            # Just served (here or by another replica) and not written yet: wait one flush.
            await asyncio.to_thread(self._flush)
            await asyncio.sleep(3 * self._flush_s)
            logged = await asyncio.to_thread(intake.lookup, items)
        return await asyncio.to_thread(intake.submit, items, logged)
