"""A scikit-learn estimator as a predictor: class probabilities in ``spec.classes`` order."""

from __future__ import annotations

from typing import Any

import numpy as np

from stratum.errors import IntegrityError
from stratum.models.estimators import loads
from stratum.models.outputs import spec_outputs
from stratum.store import LoadedModel


class SklearnPredictor:
    framework = "sklearn"
    backend = "sklearn"
    fallback_reason: str | None = None

    def __init__(self, loaded: LoadedModel) -> None:
        self._est = loads(loaded.weights_blob, f"model {loaded.name} v{loaded.version}")
        self._classify = loaded.spec.task == "classification"
        self._k = spec_outputs(loaded)
        self._flat = len(loaded.spec.input_shape) != 1
        self._columns = _class_columns(getattr(self._est, "classes_", None), loaded.spec.classes)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._flat:
            x = x.reshape(len(x), -1)
        if not self._classify:
            return np.asarray(self._est.predict(x), dtype=np.float32).reshape(-1)
        out = np.zeros((len(x), self._k), dtype=np.float32)
        if hasattr(self._est, "predict_proba"):
            out[:, self._columns] = self._est.predict_proba(x)
        else:  # e.g. LinearSVC: a hard vote
            pos = np.searchsorted(self._est.classes_, self._est.predict(x))
            out[np.arange(len(x)), self._columns[pos]] = 1.0
        return out


def _class_columns(est_classes: Any, spec_classes: list[Any] | None) -> np.ndarray:
    """Column of each estimator class in ``spec.classes`` order. Estimators trained on class
    indices know only the classes they saw; those trained on labels know labels."""
    if est_classes is None:
        raise IntegrityError("classifier has no classes_; is it fitted?")
    spec_classes = spec_classes or []
    cols = []
    for c in list(est_classes):
        if c in spec_classes:
            cols.append(spec_classes.index(c))
        elif isinstance(c, int | np.integer) and 0 <= int(c) < len(spec_classes):
            cols.append(int(c))
        else:
            raise IntegrityError(f"estimator class {c!r} is not among the spec classes")
    return np.asarray(cols, dtype=np.int64)
