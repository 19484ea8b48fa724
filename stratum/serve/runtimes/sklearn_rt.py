"""scikit-learn via skops (never pickle): only scikit-learn, NumPy and SciPy types load."""

from __future__ import annotations

from typing import Any

import numpy as np

from stratum.errors import IntegrityError
from stratum.serve.runtime import num_outputs
from stratum.store import LoadedModel

_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def load_skops(blob: bytes, where: str) -> Any:
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=blob)
    refused = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if refused:
        raise IntegrityError(
            f"{where}: refusing to load types outside scikit-learn/NumPy/SciPy: {refused}"
        )
    return sio.loads(blob, trusted=untrusted)


class SklearnRuntime:
    framework = "sklearn"

    def __init__(self, loaded: LoadedModel) -> None:
        self._est = load_skops(loaded.weights_blob, f"model {loaded.name} v{loaded.version}")
        self._classify = loaded.spec.task == "classification"
        self._k = num_outputs(loaded)
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
