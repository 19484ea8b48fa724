"""How the learner judges a model on rows: per-row correctness and one score.

The models themselves (load, predict, fine-tune, weights) come from ``stratum.models``.
"""

from __future__ import annotations

import numpy as np

from stratum.models import FineTune, Trainable, load_trainable
from stratum.store import LoadedModel

OnlineModel = Trainable


def load_online_model(loaded: LoadedModel) -> OnlineModel:
    """The champion (or a base version) as a model the learner can fine-tune."""
    return load_trainable(loaded)


def correct(model: OnlineModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: right class (classification) or within 10% of the spread (regression)."""
    if len(x) == 0:
        return np.zeros(0, bool)
    pred = model.predict(x)
    if model.spec.task == "classification":
        return np.asarray(pred == y, bool)
    spread = float(np.std(y)) or 1.0
    return np.asarray(np.abs(pred - y) <= 0.1 * spread, bool)


def score(model: OnlineModel, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or R² (regression): higher is better for both."""
    if len(x) == 0:
        return float("nan")
    if model.spec.task == "classification":
        return float(correct(model, x, y).mean())
    pred = model.predict(x)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return 1.0 - ss_res / ss_tot


__all__ = ["FineTune", "OnlineModel", "correct", "load_online_model", "score"]
