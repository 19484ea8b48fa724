"""The fitted preprocessing pipeline: raw feature columns -> one float32 model input.

A pipeline is data, not code: a JSON config plus a few numpy arrays (``to_artifacts``),
saved with the dataset version and with every model version trained on it, so training
and serving apply byte-for-byte the same transform. Never pickled.

Steps, one per raw feature, in ``feature_names`` order:

- numeric: fill missing with the training fill value, then ``(x - center) / scale``
  (standardize: mean/std; min-max: min/range; none: 0/1) -> one output column.
- categorical: one-hot over the categories seen at ingest; unknown values -> all zeros.
- image: ``(x / max_value - mean) / std`` reshaped to ``(C, H, W)``; an image dataset has
  exactly one feature, the image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stratum.errors import DataError

FORMAT_VERSION = 1


class Pipeline:
    """A fitted transform; build it with ``Pipeline.fit_*`` helpers or ``from_artifacts``.

    >>> p = Pipeline([{"name": "x", "kind": "numeric", "scale": "standardize"}],
    ...              {"numeric.center": np.array([1.0]), "numeric.scale": np.array([2.0]),
    ...               "numeric.fill": np.array([1.0])})
    >>> p.transform({"x": [3.0, None]}).tolist()
    [[1.0], [0.0]]
    """

    def __init__(self, steps: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]):
        self.steps = [dict(s) for s in steps]
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.feature_names: list[str] = [s["name"] for s in self.steps]
        kinds = [s["kind"] for s in self.steps]
        if "image" in kinds:
            if len(self.steps) != 1:
                raise DataError("an image dataset must have exactly one feature (the image)")
            self.input_shape: list[int] = [int(d) for d in self.steps[0]["shape"]]
        else:
            width = sum(len(s["categories"]) if s["kind"] == "categorical" else 1
                        for s in self.steps)
            self.input_shape = [width]
        self._numeric = [i for i, k in enumerate(kinds) if k == "numeric"]
        if self._numeric:
            for key in ("numeric.center", "numeric.scale", "numeric.fill"):
                if self.arrays.get(key) is None or len(self.arrays[key]) != len(self._numeric):
                    raise DataError(f"preprocessing array {key!r} is missing or has a wrong size")

    # -- serialisation ---------------------------------------------------------------------
    def to_artifacts(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: JSON-able config and float64 arrays for safetensors."""
        config = {"format": FORMAT_VERSION, "steps": self.steps,
                  "feature_names": self.feature_names, "input_shape": self.input_shape}
        arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in self.arrays.items()}
        return config, arrays

    @classmethod
    def from_artifacts(cls, config: Mapping[str, Any],
                       arrays: Mapping[str, np.ndarray]) -> Pipeline:
        if config.get("format") != FORMAT_VERSION or "steps" not in config:
            raise DataError(f"unsupported preprocessing config (format {config.get('format')!r})")
        return cls(config["steps"], arrays)

    # -- transform ---------------------------------------------------------------------------
    def transform(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> np.ndarray:
        """Raw columns by feature name -> float32 array of shape ``(n, *input_shape)``."""
        missing = [f for f in self.feature_names if f not in columns]
        if missing:
            raise DataError(f"input is missing feature column(s) {missing}",
                            hint=f"expected {self.feature_names}")
        if self.steps[0]["kind"] == "image":
            return self._image(np.asarray(columns[self.feature_names[0]]))
        n = _length(columns[self.feature_names[0]])
        out = np.empty((n, self.input_shape[0]), dtype=np.float32)
        pos, numeric_idx = 0, 0
        center = self.arrays.get("numeric.center")
        scale = self.arrays.get("numeric.scale")
        fill = self.arrays.get("numeric.fill")
        for step in self.steps:
            col = columns[step["name"]]
            if _length(col) != n:
                raise DataError(f"feature {step['name']!r} has {_length(col)} values, "
                                f"expected {n}")
            if step["kind"] == "numeric":
                assert center is not None and scale is not None and fill is not None
                x = _as_float(col, step["name"])
                x = np.where(np.isnan(x), fill[numeric_idx], x)
                out[:, pos] = (x - center[numeric_idx]) / scale[numeric_idx]
                pos += 1
                numeric_idx += 1
            else:
                cats = step["categories"]
                lookup = {c: i for i, c in enumerate(cats)}
                block = np.zeros((n, len(cats)), dtype=np.float32)
                idx = np.fromiter((lookup.get(_cat(v), -1) for v in col), np.int64, n)
                hit = idx >= 0
                block[np.nonzero(hit)[0], idx[hit]] = 1.0
                out[:, pos:pos + len(cats)] = block
                pos += len(cats)
        return out

    def transform_matrix(self, X: Any) -> np.ndarray:
        """``X`` holds raw features in ``feature_names`` order (images: ``(n, H*W)`` or
        ``(n, C, H, W)``) -> float32 ``(n, *input_shape)``."""
        if self.steps[0]["kind"] == "image":
            return self._image(np.asarray(X))
        arr = np.asarray(X)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(self.feature_names):
            raise DataError(f"input has shape {list(arr.shape)}, expected (n, "
                            f"{len(self.feature_names)}) in order {self.feature_names}")
        if arr.dtype != object and len(self._numeric) == len(self.steps):
            return self._numeric_fast(arr)
        return self.transform({f: arr[:, i] for i, f in enumerate(self.feature_names)})

    def _numeric_fast(self, arr: np.ndarray) -> np.ndarray:
        x = arr.astype(np.float64, copy=False)
        fill = self.arrays["numeric.fill"]
        x = np.where(np.isnan(x), fill, x)
        return ((x - self.arrays["numeric.center"]) / self.arrays["numeric.scale"]).astype(
            np.float32)

    def _image(self, x: np.ndarray) -> np.ndarray:
        step = self.steps[0]
        shape = [int(d) for d in step["shape"]]
        size = math.prod(shape)
        if x.dtype == object:
            x = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in x])
        if x.size % size != 0 or (x.ndim > 1 and math.prod(x.shape[1:]) != size):
            raise DataError(f"image input has shape {list(x.shape)}; each sample needs {size} "
                            f"values, shape {shape}")
        x = x.reshape(-1, *shape).astype(np.float32)
        mean, std = float(step.get("mean", 0.0)), float(step.get("std", 1.0))
        out: np.ndarray = (x * np.float32(1.0 / float(step["max_value"])) - np.float32(mean))
        out /= np.float32(std)
        return out


def _length(col: Any) -> int:
    return int(col.shape[0]) if isinstance(col, np.ndarray) else len(col)


def _cat(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _as_float(col: Any, name: str) -> np.ndarray:
    if isinstance(col, np.ndarray) and col.dtype.kind in "fiub":
        return col.astype(np.float64, copy=False)
    try:
        return np.array([np.nan if v is None else float(v) for v in col], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"feature {name!r} must be numeric: {exc}") from exc


def fit_numeric_step(name: str, scale: str, stats: Mapping[str, float]) -> tuple[
        dict[str, Any], float, float]:
    """``(step, center, scale)`` for one numeric feature from its train statistics."""
    if scale == "standardize":
        center, width = stats["mean"], stats["std"]
    elif scale == "minmax":
        center, width = stats["min"], stats["max"] - stats["min"]
    else:
        center, width = 0.0, 1.0
    if not math.isfinite(width) or width <= 1e-12:
        width = 1.0
    if not math.isfinite(center):
        center = 0.0
    return {"name": name, "kind": "numeric", "scale": scale}, float(center), float(width)


def build_pipeline(steps: list[dict[str, Any]], centers: list[float], scales: list[float],
                   fills: list[float]) -> Pipeline:
    arrays: dict[str, np.ndarray] = {}
    if centers:
        arrays = {"numeric.center": np.array(centers, dtype=np.float64),
                  "numeric.scale": np.array(scales, dtype=np.float64),
                  "numeric.fill": np.array(fills, dtype=np.float64)}
    return Pipeline(steps, arrays)


__all__ = ["Pipeline", "build_pipeline", "fit_numeric_step"]
