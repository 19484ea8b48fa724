"""Check a request's inputs against the model signature and make the model-ready batch.

The signature comes from the registered ``ModelSpec``: the per-sample shape the network
takes (after preprocessing), the raw feature names for tabular data, and the fitted
preprocessing pipeline when the dataset had one. Every mismatch raises a
``SignatureError`` (422) or ``BadRequestError`` (400) whose message says what was
expected — never an exception that would turn into a 5xx.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from stratum.errors import BadRequestError, SignatureError, StratumError
from stratum.store import ModelSpec


class Preprocessor(Protocol):
    """What the replica needs of ``stratum.data.preprocessing.Pipeline``."""

    def transform(self, columns: Mapping[str, Any]) -> np.ndarray: ...
    def transform_matrix(self, X: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Signature:
    input_shape: tuple[int, ...]  # one sample, model-ready
    raw_shapes: tuple[tuple[int, ...], ...]  # accepted raw sample shapes, canonical first
    feature_names: tuple[str, ...] | None  # raw tabular columns, in order
    pipeline: Preprocessor | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec, pipeline: Preprocessor | None = None) -> Signature:
        shape = tuple(spec.input_shape)
        image = len(shape) == 3
        names = tuple(spec.feature_names) if spec.feature_names and not image else None
        if pipeline is not None and names is not None:
            raw: tuple[tuple[int, ...], ...] = ((len(names),),)
        else:
            raw = (shape,)
            if len(shape) > 1:
                raw += ((math.prod(shape),),)  # flat pixels, as an OIP client often sends
            if image and shape[0] == 1:
                raw += (shape[1:],)  # a grey image as H x W
        return cls(shape, raw, names, pipeline)

    @property
    def canonical_raw(self) -> tuple[int, ...]:
        return self.raw_shapes[0]

    # -- entry points ---------------------------------------------------------------------
    def from_array(self, arr: np.ndarray, what: str = "input") -> np.ndarray:
        """A numeric batch ``(n, *raw_shape)`` → the model-ready float32 batch."""
        if arr.ndim == 0 or len(arr) == 0:
            raise SignatureError(f"{what} is empty; send at least one sample")
        sample = tuple(arr.shape[1:])
        if sample not in self.raw_shapes:
            if sample == () and self.canonical_raw == (1,):
                arr, sample = arr.reshape(-1, 1), (1,)
            else:
                raise SignatureError(
                    f"{what} has sample shape {list(sample)}; the model expects "
                    + " or ".join(str(list(s)) for s in self.raw_shapes) + self._names_hint()
                )
        if arr.dtype.kind not in "fiu":
            raise SignatureError(f"{what} has dtype {arr.dtype}; the model takes numbers")
        if self.pipeline is not None:
            out = self._preprocess(lambda p: p.transform_matrix(arr), what)
            return self._require_finite(out, what, lambda: self._named_columns(arr))
        if sample != self.input_shape:
            arr = arr.reshape((len(arr), *self.input_shape))
        with np.errstate(over="ignore"):  # an overflow is refused just below, by name
            out = arr.astype(np.float32, copy=False)
        return self._require_finite(out, what, None)

    def from_instances(self, instances: Any) -> np.ndarray:
        """The plain route's ``instances``: a list of samples (nested numbers), or of
        ``{feature: value}`` objects for tabular models."""
        if not isinstance(instances, list) or not instances:
            raise BadRequestError("'instances' must be a non-empty list of samples")
        if isinstance(instances[0], dict):
            return self.from_columns(_rows_to_columns(instances))
        if self.pipeline is not None and self.feature_names is not None:
            try:
                arr = to_numeric(instances, "instances")
            except SignatureError:  # categorical values: the pipeline one-hots them
                return self.from_columns(_positional_columns(instances, self.feature_names))
            return self.from_array(arr, "instances")
        return self.from_array(to_numeric(instances, "instances"), "instances")

    def from_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Raw columns by feature name (all the same length) → model-ready batch."""
        if self.feature_names is None:
            raise SignatureError(
                "this model takes unnamed tensors, not named features; "
                f"send samples of shape {list(self.canonical_raw)}"
            )
        missing = [f for f in self.feature_names if f not in columns]
        extra = [f for f in columns if f not in self.feature_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing feature(s) {missing}")
            if extra:
                parts.append(f"unknown feature(s) {extra}")
            raise SignatureError("; ".join(parts) + self._names_hint())
        lengths = {len(columns[f]) for f in self.feature_names}
        if len(lengths) != 1:
            raise SignatureError(f"features have different numbers of rows: {sorted(lengths)}")
        if self.pipeline is not None:
            out = self._preprocess(lambda p: p.transform(columns), "features")
            return self._require_finite(out, "features", lambda: columns)
        matrix = np.column_stack([to_numeric(columns[f], f"feature {f!r}")
                                  for f in self.feature_names])
        return self.from_array(matrix, "features")

    # -- helpers --------------------------------------------------------------------------
    def _require_finite(self, batch: np.ndarray, what: str,
                        raw: Callable[[], Mapping[str, Any] | None] | None) -> np.ndarray:
        """Refuse NaN, infinity and numbers past FP32's range (the cast makes them
        infinite): a model fed them answers NaN. Checked on the model-ready batch, so a
        missing value the pipeline imputes is still fine; one pass per request, and the
        rows and features are worked out only when it fails."""
        if np.isfinite(batch).all():
            return batch
        rows = non_finite_rows(batch)
        features: list[str] = []
        columns = raw() if raw is not None else None
        if columns is not None:
            features = [f for f, col in columns.items() if _out_of_range(col)]
        elif self.feature_names is not None and batch.shape[1:] == (len(self.feature_names),):
            bad = ~np.isfinite(batch).all(axis=0)
            features = [self.feature_names[j] for j in np.flatnonzero(bad)]
        where = f"instance(s) {few(rows)}" + (f", feature(s) {features}" if features else "")
        raise SignatureError(
            f"{what}: {where} hold NaN, infinity or a number beyond the FP32 range "
            f"(±{float(np.finfo(np.float32).max):.3g})",
            hint="send finite numbers within the range the model was trained on")

    def _named_columns(self, arr: np.ndarray) -> Mapping[str, Any] | None:
        if self.feature_names is None or arr.ndim != 2 or arr.shape[1] != len(self.feature_names):
            return None
        return {f: arr[:, j] for j, f in enumerate(self.feature_names)}

    def _preprocess(self, fn: Any, what: str) -> np.ndarray:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # refused by _require_finite
                out = np.asarray(fn(self.pipeline), dtype=np.float32)
        except StratumError:
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise SignatureError(f"preprocessing rejected the {what}: {exc}") from exc
        if tuple(out.shape[1:]) != self.input_shape:
            raise SignatureError(
                f"preprocessing made samples of shape {list(out.shape[1:])}, the model takes "
                f"{list(self.input_shape)}"
            )
        return out

    def _names_hint(self) -> str:
        if self.feature_names is None:
            return ""
        shown = ", ".join(self.feature_names[:20])
        more = "" if len(self.feature_names) <= 20 else f", … ({len(self.feature_names)} in all)"
        return f" (features in order: {shown}{more})"


def non_finite_rows(batch: np.ndarray) -> list[int]:
    """The rows of ``batch`` (inputs or a model's outputs) holding NaN or infinity."""
    return np.flatnonzero(~np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)).tolist()


def few(items: list[int], limit: int = 10) -> str:
    """A list for a message: the first ``limit`` items and how many more."""
    return str(items) if len(items) <= limit else f"{items[:limit]} and {len(items) - limit} more"


def _out_of_range(col: Any) -> bool:
    """Does a raw column hold an infinity or a number FP32 cannot hold? (Failure path only;
    NaN is left out because a pipeline imputes it.)"""
    try:
        x = np.asarray(col, dtype=np.float64)
    except (TypeError, ValueError):
        return False  # categorical: the pipeline one-hots it, never non-finite
    return bool((np.abs(x[~np.isnan(x)]) > np.finfo(np.float32).max).any())


def to_numeric(data: Any, what: str) -> np.ndarray:
    """Nested lists of numbers → an ndarray; ragged lists or non-numbers → a clear 4xx.

    No target dtype on the first pass: NumPy would quietly parse ``"1.5"`` into a float.
    """
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"{what} is ragged: its nested lists do not all have the same length"
        ) from exc
    if arr.dtype.kind not in "fiu":
        kind = _first_non_number(data) or str(arr.dtype)
        raise SignatureError(f"{what} holds a {kind} value; the model takes numbers")
    return arr


def _first_non_number(data: Any) -> str | None:
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, bool) or not isinstance(v, int | float):
            return "null" if v is None else type(v).__name__
    return None


def _rows_to_columns(rows: list[Any]) -> dict[str, list[Any]]:
    if not all(isinstance(r, dict) for r in rows):
        raise BadRequestError("'instances' mixes objects and arrays; use one form")
    keys = list(rows[0])
    for i, r in enumerate(rows):
        if list(r) != keys and set(r) != set(keys):
            raise SignatureError(f"instance {i} has features {sorted(r)}, instance 0 has "
                                 f"{sorted(keys)}")
    return {k: [r[k] for r in rows] for k in keys}


def _positional_columns(rows: list[Any], names: tuple[str, ...]) -> dict[str, list[Any]]:
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != len(names):
            got = f"{len(r)} values" if isinstance(r, list) else type(r).__name__
            raise SignatureError(f"instance {i} has {got}; the model takes {len(names)} "
                                 f"features in order: {', '.join(names[:20])}")
    return {f: [r[j] for r in rows] for j, f in enumerate(names)}
