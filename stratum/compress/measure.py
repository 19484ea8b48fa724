"""The figures a compression report compares: quality, size and speed of one version.

Every version is measured the way a replica runs it (``stratum.models.load_predictor``
with the serving default, ONNX Runtime), on the same test split, so a parent and its
child differ only by what the pass did. Timings interleave the two versions round by
round: on a shared machine a burst of load then hits both, not one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stratum.models import PredictOptions, Predictor, load_predictor
from stratum.store import LoadedModel

BATCH = 32
_RUNTIMES = {"onnx": "onnxruntime"}  # an ONNX version's predictor names its format


@dataclass
class Figures:
    """One version's row of a report."""

    version: int
    made_by: str  # the pass ("export", "int8-dynamic", ...) or "parent"
    framework: str
    runtime: str  # what ran the forward pass: onnxruntime, onnx (an ONNX graph), eager, ...
    metric: str  # accuracy (classification) or r2 (regression)
    score: float
    bytes: int  # the weights artifact (safetensors, sparse safetensors or ONNX)
    p50_ms: float = 0.0  # batch of 1
    p99_ms: float = 0.0
    samples_per_s: float = 0.0  # batches of 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predictor(loaded: LoadedModel, cache_dir: Path | None = None) -> Predictor:
    """The replica's runtime for a version (a torch net is exported and run in ORT;
    ``cache_dir`` is where a replica keeps such exports)."""
    return load_predictor(loaded, PredictOptions(torch_backend="onnxruntime",
                                                 cache_dir=cache_dir))


def score(pred: Predictor, task: str, x: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    """Accuracy of a classifier, R² of a regressor, on ``(x, y)``."""
    out = np.concatenate([pred.predict(x[i:i + 512]) for i in range(0, len(x), 512)])
    if task == "classification":
        return "accuracy", float((out.argmax(1) == y).mean())
    resid = float(((out.reshape(-1) - y) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum()) or 1.0
    return "r2", 1.0 - resid / total


def figures(loaded: LoadedModel, made_by: str, pred: Predictor, x: np.ndarray,
            y: np.ndarray) -> Figures:
    metric, value = score(pred, loaded.spec.task, x, y)
    return Figures(version=loaded.version, made_by=made_by, framework=loaded.spec.framework,
                   runtime=_RUNTIMES.get(pred.backend, pred.backend), metric=metric,
                   score=value, bytes=len(loaded.weights_blob))


def time_both(preds: list[Predictor], rows: list[Figures], x: np.ndarray,
              seconds: float = 1.0, rounds: int = 5) -> None:
    """Fill the latency (batch 1: median, p99) and throughput (batch 32) of each figure,
    interleaving the predictors over ``rounds`` rounds of ``seconds / rounds`` each."""
    one, many = x[:1], _batch(x)
    for p in preds:  # warm up: first runs allocate
        for _ in range(5):
            p.predict(one)
            p.predict(many)
    lat: list[list[float]] = [[] for _ in preds]
    done, busy = [0] * len(preds), [0.0] * len(preds)
    slot = seconds / rounds / len(preds) / 2
    for _ in range(rounds):
        for i, p in enumerate(preds):
            end = time.perf_counter() + slot
            while time.perf_counter() < end:
                t = time.perf_counter()
                p.predict(one)
                lat[i].append(time.perf_counter() - t)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < slot:
                p.predict(many)
                done[i] += len(many)
            busy[i] += time.perf_counter() - t0
    for i, row in enumerate(rows):
        ms = np.asarray(lat[i]) * 1e3
        row.p50_ms = float(np.median(ms))
        row.p99_ms = float(np.percentile(ms, 99))
        row.samples_per_s = done[i] / max(busy[i], 1e-9)


def _batch(x: np.ndarray) -> np.ndarray:
    if len(x) >= BATCH:
        return np.ascontiguousarray(x[:BATCH])
    return np.ascontiguousarray(np.resize(x, (BATCH, *x.shape[1:])))


__all__ = ["BATCH", "Figures", "figures", "predictor", "score", "time_both"]
