"""The training config: one pydantic model that a YAML file maps onto one to one.

Unknown keys are rejected (a typo must not silently train with a default); CLI flags
override fields after the file is read. ``config_hash`` identifies what was trained for
lineage; it ignores how it ran (workers, threads) because those do not change the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stratum.errors import ConfigError
from stratum.security.names import validate_name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelConfig(_Section):
    """A zoo name (``cnn``, ``mlp``, ``random_forest``...) or ``module:function``."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    # auto: zoo names say which; a module:function returning an estimator needs "sklearn"
    framework: Literal["auto", "torch", "sklearn"] = "auto"


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only


class ScheduleConfig(_Section):
    name: Literal["none", "cosine", "step"] = "none"
    warmup_steps: int = Field(0, ge=0)
    step_epochs: int = Field(1, ge=1)  # "step": multiply by gamma every step_epochs
    gamma: float = Field(0.5, gt=0, le=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # "cosine": floor as a fraction of lr


class EarlyStoppingConfig(_Section):
    metric: str = "val_loss"  # val_loss or val_<metric>, e.g. val_accuracy
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class ParameterServerConfig(_Section):
    """``strategy: parameter_server``: S server processes beside the W workers."""

    servers: int = Field(1, ge=1, le=16)
    mode: Literal["sync", "async"] = "sync"
    staleness: int = Field(2, ge=0)  # async: steps a worker may run ahead of the slowest


class FedAvgConfig(_Section):
    """``strategy: fedavg``: each worker is a client; ``epochs`` counts rounds."""

    local_epochs: int = Field(1, ge=1)  # passes over its own rows a client makes per round
    fraction: float = Field(1.0, gt=0, le=1)  # share of clients that train in a round
    partition: Literal["iid", "label_skew"] = "iid"
    shards_per_client: int = Field(2, ge=1)  # label_skew: label-sorted chunks per client


class MemberConfig(_Section):
    """One ensemble member; what it leaves out it takes from the run's config."""

    model: ModelConfig | None = None
    seed: int | None = None  # default: the run's seed + the member's index
    optimizer: OptimizerConfig | None = None
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)


# logistic regression whose L2 strength is chosen by cross-validated log-loss
DEFAULT_META = "sklearn_logistic_cv"


class EnsembleConfig(_Section):
    members: list[MemberConfig] = Field(min_length=2, max_length=32)
    combine: Literal["hard", "soft", "stacking"] = "soft"
    # stacking: the meta-learner is fitted on the members' out-of-fold outputs from
    # `folds`-fold cross-validation over the training and validation rows (stacking.py)
    meta: ModelConfig = Field(default_factory=lambda: ModelConfig(name=DEFAULT_META))
    folds: int = Field(5, ge=2, le=20)


AUGMENTATIONS = ("rotate", "crop", "brightness", "contrast", "noise")


class TrainConfig(_Section):
    """Everything one training run needs; see docs/training.md for each field."""

    dataset: str  # name, name@latest or name@<hash prefix>
    model: ModelConfig
    name: str | None = None  # registered model name; defaults to the dataset's name
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig())
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig())
    loss: Literal["auto", "cross_entropy", "hinge", "mse"] = "auto"
    batch_size: int = Field(64, ge=1)  # global: split across ddp workers
    epochs: int = Field(5, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint_every: int = Field(200, ge=1)  # optimizer steps between checkpoints
    seed: int = 0
    metrics: list[str] | None = None  # None: all for the task
    strategy: str = "auto"  # auto: ddp when workers > 1, else single
    workers: int = Field(1, ge=1, le=64)
    bf16: bool | None = None  # None: on where CUDA supports it, off on CPU
    threads: int | None = Field(None, ge=1)  # torch threads per worker
    log_every_s: float = Field(2.0, ge=0)  # throttle for per-step metric rows
    init_from: str | None = None  # NAME@REF of a registered version to fine-tune
    augment: dict[str, float] | None = None  # {rotate: 15, crop: 2}; training batches only
    parameter_server: ParameterServerConfig = Field(
        default_factory=lambda: ParameterServerConfig())
    fedavg: FedAvgConfig = Field(default_factory=lambda: FedAvgConfig())
    ensemble: EnsembleConfig | None = None

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, v: Any) -> Any:
        # YAML's `augment: [rotate: 15, crop: 2]` is a list of one-key mappings
        if isinstance(v, list):
            merged: dict[str, Any] = {}
            for item in v:
                if not isinstance(item, dict):
                    raise ValueError(f"give each augmentation as name: strength, got {item!r}")
                merged.update(item)
            v = merged
        if isinstance(v, dict):
            bad = sorted(set(v) - set(AUGMENTATIONS))
            if bad:
                raise ValueError(f"unknown augmentation {bad}; choose from "
                                 f"{', '.join(AUGMENTATIONS)}")
            if any(not isinstance(x, int | float) or x < 0 for x in v.values()):
                raise ValueError("augmentation strengths are numbers >= 0")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_ref(cls, v: str) -> str:
        name, _, ref = v.partition("@")
        validate_name(name, "dataset name")
        if "@" in v and not ref:
            raise ValueError("give name, name@latest or name@<version hash prefix>")
        return v

    @field_validator("name")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        return None if v is None else validate_name(v, "model name")

    @property
    def model_name(self) -> str:
        return self.name or self.dataset.partition("@")[0]

    def resolved_strategy(self) -> str:
        if self.strategy == "auto":
            return "ddp" if self.workers > 1 else "single"
        return self.strategy

    def config_hash(self) -> str:
        doc = self.model_dump(mode="json", exclude={"workers", "threads", "strategy"})
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _describe(exc: ValidationError, where: str) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (check the spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {msg}")
    return f"invalid training config{where}: " + "; ".join(parts)


def parse_config(doc: dict[str, Any], *, source: str | None = None,
                 **overrides: Any) -> TrainConfig:
    """Validate a config document; ``overrides`` that are not None replace top-level keys."""
    merged = {**doc, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f" {source}" if source else "")) from exc


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a YAML training config; CLI flags come in as ``overrides``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.yaml"
    >>> _ = p.write_text("dataset: iris\\nmodel: {name: logistic}\\n")
    >>> load_config(p, epochs=2).epochs
    2
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training config {p} does not exist")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"training config {p} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"training config {p} must be a mapping of keys to values")
    return parse_config(doc, source=str(p), **overrides)
