"""What a model's output layer looks like, and how raw scores become probabilities.

Every framework answers with the same contract: ``(n, k)`` class probabilities for a
classifier (columns in ``spec.classes`` order) or ``(n,)`` values for a regressor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stratum.errors import ConfigError
from stratum.store import LoadedModel


def num_outputs(task: str, classes: Sequence[Any] | None, what: str = "the dataset") -> int:
    """Width of the output layer: one per class, or 1 for a regressor."""
    if task != "classification":
        return 1
    if not classes:
        raise ConfigError(f"{what} is a classifier without classes",
                          hint="a classification dataset or ModelSpec needs classes=[...]")
    return len(classes)


def spec_outputs(loaded: LoadedModel) -> int:
    """``num_outputs`` of a registered version, naming it when its spec lacks classes."""
    return num_outputs(loaded.spec.task, loaded.spec.classes,
                       f"model {loaded.name} v{loaded.version}")


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)


__all__ = ["num_outputs", "softmax", "spec_outputs"]
