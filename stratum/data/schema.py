"""Dataset schemas: declared in YAML or inferred from the first batch of a source.

A schema names the target column, the task, and each feature's type (numeric,
categorical, image) with optional bounds, allowed categories, an imputation strategy and
a scaling. YAML maps onto it one to one (see ``examples/schema-example.yaml``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from stratum.errors import DataError

Kind = Literal["numeric", "categorical", "image"]
Impute = Literal["mean", "median", "mode", "constant", "drop"]
TARGET_NAMES = ("target", "label", "labels", "class", "y")
# Integer targets with at most this many distinct values (in the first batch) are classes.
MAX_INFERRED_CLASSES = 50
# A text column whose values parse as numbers at least this often is numeric with errors.
NUMERIC_TEXT_SHARE = 0.75
NUMBER_RE = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class Feature(BaseModel):
    model_config = {"extra": "forbid"}

    name: str
    type: Kind = "numeric"
    min: float | None = None  # rows outside [min, max] are dropped as invalid
    max: float | None = None
    categories: list[str] | None = None  # declared: other values are invalid rows
    shape: list[int] | None = None  # image (C, H, W)
    impute: Impute | None = None  # default: mean (numeric), mode (categorical), drop (image)
    fill_value: float | str | None = None  # for impute: constant
    scale: Literal["standardize", "minmax", "none"] = "standardize"

    @model_validator(mode="after")
    def _check(self) -> Feature:
        if self.type == "image" and (not self.shape or len(self.shape) != 3):
            raise ValueError(f"image feature {self.name!r} needs shape [C, H, W]")
        if self.impute == "constant" and self.fill_value is None:
            raise ValueError(f"feature {self.name!r}: impute: constant needs fill_value")
        return self

    @property
    def strategy(self) -> Impute:
        if self.impute is not None:
            return self.impute
        return {"numeric": "mean", "categorical": "mode", "image": "drop"}[self.type]  # type: ignore[return-value]


class Schema(BaseModel):
    """What the columns of a dataset mean. ``task`` None -> inferred from the target."""

    model_config = {"extra": "forbid"}

    target: str
    task: Literal["classification", "regression"] | None = None
    features: list[Feature] = Field(default_factory=list)
    classes: list[Any] | None = None  # declared class labels; others are invalid rows
    dedupe: bool = True
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> Schema:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if self.target in names:
            raise ValueError(f"the target {self.target!r} cannot also be a feature")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave rows for training")
        images = [f for f in self.features if f.type == "image"]
        if images and len(self.features) != 1:
            raise ValueError("an image dataset has exactly one feature, the image")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Schema:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read schema file {p}: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
            raise DataError(f"invalid schema file {p}: " + "; ".join(parts)) from exc

    def feature(self, name: str) -> Feature:
        return next(f for f in self.features if f.name == name)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def check_columns(self, columns: list[str], where: str) -> None:
        """Raise one clear error when the source lacks a declared column."""
        missing = [c for c in [self.target, *self.feature_names] if c not in columns]
        if missing:
            raise DataError(f"{where}: schema column(s) {missing} not found in the data",
                            hint=f"the data has columns {columns}")


def infer_schema(batch: pa.RecordBatch, where: str, target: str | None = None,
                 hints: Schema | None = None) -> Schema:
    """Infer a schema from a sample batch; ``hints`` (declared) win where given."""
    if hints is not None:
        hints.check_columns(batch.schema.names, where)
        return hints
    names = batch.schema.names
    if len(names) < 2:
        raise DataError(f"{where}: needs a target and at least one feature column, "
                        f"found columns {names}")
    if target is None:
        lowered = {n.lower(): n for n in names}
        target = next((lowered[t] for t in TARGET_NAMES if t in lowered), names[-1])
    features: list[Feature] = []
    for name in names:
        if name == target:
            continue
        features.append(_infer_feature(name, batch.column(name)))
    task = infer_task(batch.column(target))
    return Schema(target=target, task=task, features=features)


def _infer_feature(name: str, col: pa.Array) -> Feature:
    t = col.type
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        side = math.isqrt(size)
        if side * side != size:
            raise DataError(f"column {name!r}: image of {size} values is not square; "
                            "declare its shape in a schema file")
        return Feature(name=name, type="image", shape=[1, side, side], min=0.0)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return Feature(name=name, type="numeric")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        valid = pc.drop_null(col)
        if len(valid) and pc.sum(pc.match_substring_regex(valid, NUMBER_RE)).as_py() >= (
                NUMERIC_TEXT_SHARE * len(valid)):
            return Feature(name=name, type="numeric")
        return Feature(name=name, type="categorical")
    raise DataError(f"column {name!r} has unsupported type {t}")


def infer_task(target: pa.Array) -> Literal["classification", "regression"]:
    t = target.type
    if pa.types.is_floating(t):
        return "regression"
    if pa.types.is_integer(t):
        distinct = len(pc.unique(pc.drop_null(target)))
        return "classification" if distinct <= MAX_INFERRED_CLASSES else "regression"
    return "classification"


__all__ = ["Feature", "Schema", "infer_schema", "infer_task"]
