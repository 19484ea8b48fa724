"""Evaluation metrics and the throttled metric stream to the store.

Meters keep only additive sufficient statistics (a confusion matrix; sums of errors and
targets) so that ddp workers evaluate their own shards and one all-reduce of ``state()``
gives exactly the metrics of the whole split.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any, Protocol

import numpy as np
import torch

from stratum.errors import ConfigError

CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
REGRESSION = ("mse", "mae", "r2")


def metric_names(task: str, wanted: list[str] | None) -> list[str]:
    allowed = CLASSIFICATION if task == "classification" else REGRESSION
    if wanted is None:
        return list(allowed)
    bad = [w for w in wanted if w not in allowed]
    if bad:
        raise ConfigError(
            f"metrics {bad} do not apply to a {task} dataset",
            hint=f"choose from {', '.join(allowed)}",
        )
    return list(wanted)


class Meter(Protocol):
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...
    def state(self) -> torch.Tensor: ...
    def compute(self, state: torch.Tensor | None = None) -> dict[str, float]: ...


class ClassificationMeter:
    """Confusion matrix → accuracy and macro precision / recall / F1."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.k = num_classes
        self.cm = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        pred = output.argmax(dim=1)
        self.cm += torch.bincount(target * self.k + pred, minlength=self.k * self.k).to(
            self.cm.dtype
        )

    def state(self) -> torch.Tensor:
        return self.cm

    def compute(self, state: torch.Tensor | None = None) -> dict[str, float]:
        cm = (self.cm if state is None else state).detach().cpu().numpy().reshape(self.k, self.k)
        return classification_metrics(cm)


def classification_metrics(cm: np.ndarray) -> dict[str, float]:
    """Metrics from a confusion matrix with rows = true class, columns = predicted."""
    tp = np.diag(cm)
    total = cm.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = cm.sum(1) > 0  # macro average over classes that occur in the split
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
    }


class RegressionMeter:
    """Sums of n, error², |error|, y and y² → MSE, MAE, R²."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        pred = output.reshape(-1).double()
        y = target.reshape(-1).double()
        err = pred - y
        self.sums += torch.stack(
            [torch.tensor(float(len(y)), dtype=torch.float64, device=y.device),
             (err * err).sum(), err.abs().sum(), y.sum(), (y * y).sum()]
        )

    def state(self) -> torch.Tensor:
        return self.sums

    def compute(self, state: torch.Tensor | None = None) -> dict[str, float]:
        n, se, ae, sy, syy = (self.sums if state is None else state).tolist()
        if n == 0:
            return {"mse": 0.0, "mae": 0.0, "r2": 0.0}
        var = syy / n - (sy / n) ** 2
        return {"mse": se / n, "mae": ae / n, "r2": 1.0 - (se / n) / var if var > 0 else 0.0}


def make_meter(task: str, num_classes: int, device: torch.device | str = "cpu") -> Meter:
    if task == "classification":
        return ClassificationMeter(num_classes, device)
    return RegressionMeter(device)


class MetricStream:
    """Writes metric rows to ``store.meta.log_metrics``: per step at most every
    ``every_s`` seconds (so the hot path never waits on the database), per epoch always.
    ``sink`` is None on non-zero ranks and in benchmarks: then nothing is written.
    """

    def __init__(self, sink: Any | None, run_id: str | None, every_s: float) -> None:
        self.sink, self.run_id, self.every_s = sink, run_id, every_s
        self._last = time.monotonic()

    def due(self) -> bool:
        if self.sink is None:
            return False
        return time.monotonic() - self._last >= self.every_s

    def step(self, values: dict[str, float], *, step: int, epoch: int) -> None:
        self._last = time.monotonic()
        self._write(values, step, epoch)

    def epoch(self, values: dict[str, float], *, step: int, epoch: int) -> None:
        self._write({f"epoch_{k}" if not k.startswith(("val_", "epoch_")) else k: v
                     for k, v in values.items()}, step, epoch)

    def _write(self, values: dict[str, float], step: int, epoch: int) -> None:
        if self.sink is not None and self.run_id is not None:
            self.sink.log_metrics(self.run_id, values, step=step, epoch=epoch)


def _local_bytes(t: Any) -> int:
    """Bytes this process holds of ``t``: a sharded (DTensor) tensor counts its shard."""
    if not isinstance(t, torch.Tensor):
        return 0
    local = t.to_local() if hasattr(t, "to_local") else t
    return int(local.numel() * local.element_size())


def memory_figures(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What one worker holds: parameter and optimizer-state bytes (its shards only, under
    fsdp) and the process's peak resident memory."""
    opt = sum(_local_bytes(v) for state in optimizer.state.values() for v in state.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"param_bytes": sum(_local_bytes(p) for p in model.parameters()),
            "optimizer_bytes": opt,
            "peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024}
