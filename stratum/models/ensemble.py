"""An ensemble as one model version: K members of any framework and how their answers are
combined, served by one replica as one model.

The version's spec says ``framework: ensemble``; ``spec.params`` lists the members
(framework, architecture, params) and the combiner (``hard``, ``soft`` or ``stacking``).
Its one weights file, ``ensemble.safetensors``, holds every member: a torch member's
tensors under ``m{i}.``, a scikit-learn member's skops bytes as ``m{i}.skops`` and a
stacking meta-learner's as ``meta.skops`` (uint8 arrays) — never a pickle; the skops parts
load through the same trusted-types check as any scikit-learn version.

``EnsemblePredictor`` rebuilds each member with its own framework's predictor (so a torch
member runs in ONNX Runtime where a torch version would) and combines their class
probabilities: the mean (soft), the share of votes (hard; ties go to the higher mean
probability) or the meta-learner's probabilities over the members' concatenated ones
(stacking). For a regressor, soft is the mean and stacking the meta-learner's prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from stratum.errors import ConfigError, IntegrityError
from stratum.models.estimators import WEIGHTS_FILE as SKOPS_FILE
from stratum.models.estimators import flat, loads
from stratum.models.outputs import spec_outputs
from stratum.store import Lineage, LoadedModel

if TYPE_CHECKING:
    from stratum.models.frameworks import PredictOptions, Predictor

WEIGHTS_FILE = "ensemble.safetensors"
COMBINERS = ("hard", "soft", "stacking")


@dataclass
class Member:
    framework: str  # "torch" or "sklearn"
    architecture: str
    params: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""  # a torch member's safetensors, or a scikit-learn member's skops

    def doc(self) -> dict[str, Any]:
        return {"framework": self.framework, "architecture": self.architecture,
                "params": self.params}


def _bytes_array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.uint8).copy()


def pack(members: list[Member], meta: bytes | None = None) -> bytes:
    """The ensemble's one weights file."""
    arrays: dict[str, np.ndarray] = {}
    for i, m in enumerate(members):
        if m.framework == "sklearn":
            arrays[f"m{i}.skops"] = _bytes_array(m.blob)
        else:
            arrays.update({f"m{i}.{k}": v for k, v in st_load(m.blob).items()})
    if meta is not None:
        arrays["meta.skops"] = _bytes_array(meta)
    return st_save(arrays)


def unpack(blob: bytes, docs: list[dict[str, Any]], where: str) -> tuple[list[Member],
                                                                        bytes | None]:
    """The members (with their own weights files) and the meta-learner's skops bytes."""
    try:
        arrays = st_load(blob)
    except Exception as exc:  # safetensors raises its own error types
        raise IntegrityError(f"{where}: the ensemble's weights file is unreadable: {exc}"
                             ) from exc
    members = []
    for i, doc in enumerate(docs):
        prefix = f"m{i}."
        mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not mine:
            raise IntegrityError(f"{where}: ensemble member {i} ({doc.get('architecture')}) "
                                 "has no weights in the version's file")
        if doc["framework"] == "sklearn":
            member_blob = mine["skops"].tobytes() if "skops" in mine else b""
        else:
            member_blob = st_save(mine)
        members.append(Member(doc["framework"], doc["architecture"], doc.get("params") or {},
                              member_blob))
    meta = arrays["meta.skops"].tobytes() if "meta.skops" in arrays else None
    return members, meta


def member_model(parent: LoadedModel, index: int, member: Member) -> LoadedModel:
    """Member ``index`` as a version of its own framework (same task, inputs and classes)."""
    spec = parent.spec.model_copy(update={
        "framework": member.framework, "architecture": member.architecture,
        "params": member.params, "has_preprocessing": False, "lineage": Lineage(),
        "weights_file": SKOPS_FILE if member.framework == "sklearn" else "weights.safetensors"})
    return LoadedModel(name=f"{parent.name}.m{index}", version=parent.version, spec=spec,
                       weights_blob=member.blob)


def combine(how: str, outputs: list[np.ndarray], meta: Any | None, classify: bool,
            classes: int) -> np.ndarray:
    """The ensemble's answer from its members' (n, k) probabilities or (n,) values."""
    mean = np.mean(outputs, axis=0)
    if how == "soft" or (how == "hard" and not classify):
        return mean.astype(np.float32)
    if how == "hard":
        votes = np.zeros_like(mean)
        for out in outputs:
            votes[np.arange(len(out)), out.argmax(1)] += 1.0
        return ((votes + 1e-3 * mean) / (len(outputs) + 1e-3)).astype(np.float32)
    if meta is None:
        raise IntegrityError("a stacking ensemble has no meta-learner")
    return meta_outputs(meta, stack_features(outputs, classify), classify, classes)


def meta_outputs(meta: Any, features: np.ndarray, classify: bool, classes: int) -> np.ndarray:
    """A meta-learner's (n, k) probabilities (columns by class index) or (n,) values."""
    if not classify:
        return np.asarray(meta.predict(features), dtype=np.float32)
    out = np.zeros((len(features), classes), dtype=np.float32)
    out[:, np.asarray(meta.classes_, dtype=np.int64)] = meta.predict_proba(features)
    return out


def stack_features(outputs: list[np.ndarray], classify: bool) -> np.ndarray:
    """What a stacking meta-learner reads: the members' outputs side by side."""
    return np.concatenate(outputs, axis=1) if classify else flat(np.stack(outputs, 1))


class EnsemblePredictor:
    framework = "ensemble"
    backend = "ensemble"

    def __init__(self, loaded: LoadedModel, options: PredictOptions,
                 load_predictor: Callable[[LoadedModel, PredictOptions], Predictor]) -> None:
        params = loaded.spec.params
        where = f"model {loaded.name} v{loaded.version}"
        self.how = params.get("combine", "soft")
        if self.how not in COMBINERS:
            raise ConfigError(f"{where}: unknown ensemble combiner {self.how!r}")
        members, meta_blob = unpack(loaded.weights_blob, list(params.get("members") or []),
                                    where)
        self.members: list[Predictor] = []
        for i, member in enumerate(members):
            try:
                self.members.append(load_predictor(member_model(loaded, i, member), options))
            except Exception as exc:
                raise IntegrityError(f"{where}: ensemble member {i} ({member.architecture}) "
                                     f"cannot load: {exc}") from exc
        self.meta = loads(meta_blob, f"{where} meta-learner") if meta_blob else None
        self.classify = loaded.spec.task == "classification"
        self.k = spec_outputs(loaded)
        reasons = [p.fallback_reason for p in self.members if p.fallback_reason]
        self.fallback_reason: str | None = "; ".join(reasons) or None

    def predict(self, x: np.ndarray) -> np.ndarray:
        return combine(self.how, [p.predict(x) for p in self.members], self.meta,
                       self.classify, self.k)
