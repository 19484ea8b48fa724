"""Model slots and the hot swap.

A ``ModelSlot`` is one loaded version: runtime, signature, its own batcher and a count of
the requests it is serving. The ``Swapper`` holds the current slot. A swap loads the next
version beside it (in a worker thread, so serving goes on), warms it with a dummy batch,
then switches ``current`` in one assignment on the event loop — atomic for every request,
since each request takes its slot once, at its start, and finishes on it. The old slot
retires when its last request is done.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from stratum.config import Settings
from stratum.data.signature import Preprocessor, Signature
from stratum.errors import ConflictError, ServingError, StratumError
from stratum.monitor.logging import bind as bind_log_fields
from stratum.serve.batcher import Batcher
from stratum.serve.metrics import ReplicaMetrics
from stratum.serve.runtime import Runtime, load_runtime
from stratum.store import LoadedModel, ModelSpec, Store, load_model

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelSlot:
    name: str
    version: int
    spec: ModelSpec
    signature: Signature
    runtime: Runtime
    batcher: Batcher
    inflight: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def classifier(self) -> bool:
        return self.spec.task == "classification"

    @cached_property
    def class_labels(self) -> np.ndarray:
        """``spec.classes`` as an array (int64 when all are integers) to index by argmax."""
        classes = self.spec.classes or []
        if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            return np.asarray(classes, dtype=np.int64)
        return np.asarray([str(c) for c in classes], dtype=object)

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def retire(self, timeout: float) -> None:
        """Wait for the requests on this version to finish, then stop its batcher."""
        if self.inflight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("v%d still had %d requests after %.0fs; stopping it anyway",
                            self.version, self.inflight, timeout)
        await self.batcher.close()


def build_slot(loaded: LoadedModel, settings: Settings, executor: Executor,
               metrics: ReplicaMetrics) -> ModelSlot:
    """Rebuild and warm a version (blocking: call it from a worker thread)."""
    spec = loaded.spec
    pipeline = _pipeline(loaded) if spec.has_preprocessing else None
    runtime = load_runtime(loaded, settings.serve, settings.home / "cache")
    signature = Signature.from_spec(spec, pipeline)
    _warm(runtime, loaded, settings.serve.max_batch_size)
    batcher = Batcher(runtime.predict, max_batch_size=settings.serve.max_batch_size,
                      max_wait_ms=settings.serve.max_wait_ms, executor=executor,
                      on_batch=metrics.on_batch)
    return ModelSlot(loaded.name, loaded.version, spec, signature, runtime, batcher)


def _pipeline(loaded: LoadedModel) -> Preprocessor:
    try:
        from stratum.data.preprocessing import Pipeline
    except ImportError as exc:
        raise ServingError(f"model {loaded.name} v{loaded.version} needs preprocessing, but "
                           f"stratum.data.preprocessing is unavailable: {exc}") from exc
    assert loaded.preprocessing is not None
    return Pipeline.from_artifacts(*loaded.preprocessing)


def _warm(runtime: Runtime, loaded: LoadedModel, max_batch: int) -> None:
    """Run a dummy batch of 1 and of max_batch rows: a broken model fails here, before it
    takes traffic, and the first real requests do not pay for lazy initialisation."""
    spec = loaded.spec
    want = len(spec.classes or []) if spec.task == "classification" else None
    for n in (1, max_batch):
        x = np.zeros((n, *spec.input_shape), dtype=np.float32)
        try:
            y = runtime.predict(x)
        except Exception as exc:  # any failure means the version cannot serve
            raise ServingError(f"model {loaded.name} v{loaded.version} failed its warm-up "
                               f"forward pass: {exc}") from exc
        shape_ok = y.shape == ((n, want) if want is not None else (n,))
        if not shape_ok:
            raise ServingError(f"model {loaded.name} v{loaded.version} gives outputs of shape "
                               f"{list(y.shape)} for a batch of {n}")


class Swapper:
    """Holds the current slot; ``swap(ref)`` replaces it without dropping a request."""

    def __init__(self, store: Store, settings: Settings, executor: Executor,
                 metrics: ReplicaMetrics, model_name: str) -> None:
        self.store, self.settings, self.executor = store, settings, executor
        self.metrics, self.model_name = metrics, model_name
        self.current: ModelSlot | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    def load(self, ref: str | None) -> ModelSlot:
        """Blocking load of a version (start-up, or a swap's worker thread)."""
        loaded = load_model(self.store.meta, self.store.artifacts, self.model_name, ref)
        return build_slot(loaded, self.settings, self.executor, self.metrics)

    def install(self, slot: ModelSlot) -> ModelSlot | None:
        """Switch to ``slot`` (on the event loop); returns the slot it replaced."""
        slot.batcher.start()
        old, self.current = self.current, slot
        self.metrics.set_version(slot.version)
        bind_log_fields(version=slot.version)
        return old

    async def swap(self, ref: str) -> dict[str, Any]:
        if self._lock.locked():
            raise ConflictError("a swap is already in progress on this replica",
                                hint="wait for it to finish, then retry")
        async with self._lock:
            try:
                slot = await asyncio.to_thread(self.load, ref)
            except StratumError:
                self.metrics.swaps.labels("failed").inc()
                raise
            except Exception as exc:  # the old version keeps serving
                self.metrics.swaps.labels("failed").inc()
                raise ServingError(f"loading {self.model_name}@{ref} failed: {exc}") from exc
            old = self.install(slot)
            self.metrics.swaps.labels("ok").inc()
            if old is not None:
                task = asyncio.create_task(old.retire(self.settings.serve.drain_timeout_s))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            log.info("swapped %s v%s -> v%d", self.model_name,
                     old.version if old else None, slot.version)
            return {"name": self.model_name, "version": slot.version,
                    "previous": old.version if old else None}

    async def close(self) -> None:
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.current is not None:
            await self.current.retire(self.settings.serve.drain_timeout_s)
