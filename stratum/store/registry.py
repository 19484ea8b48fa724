"""The model registry: versions with safetensors weights, a spec, aliases and lineage.

A model version's artifacts live under ``models/{name}/{version}/``: ``spec.json``, the
weights (``weights.safetensors`` for torch; ``model.skops`` or ``model.onnx`` for
scikit-learn — never a pickle) and, when the dataset had one, the fitted preprocessing
pipeline as ``preprocessing.json`` + ``preprocessing.safetensors``. The metadata row is
written last, so a version exists only once every artifact is complete.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from safetensors.numpy import load as st_load_np
from safetensors.numpy import save as st_save_np

from stratum.store import models as m
from stratum.store.artifacts import ArtifactStore
from stratum.store.metadata import MetadataStore


class Lineage(BaseModel):
    dataset: str | None = None
    dataset_version: str | None = None
    parent_version: int | None = None
    run_id: str | None = None
    config_hash: str | None = None
    git_commit: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    # set on a version made by ``stratum compress``: pass, params, checks, report, root
    compression: dict[str, Any] | None = None

    def made_by(self) -> dict[str, Any] | None:
        """Which compression pass made the version (pass, params, parent and root
        versions, report file); None for a version that training made."""
        made = self.compression
        if not made:
            return None
        return {"pass": made.get("pass"), "params": made.get("params") or {},
                "parent_version": self.parent_version, "root_version": made.get("root"),
                "report": made.get("report")}


class ModelSpec(BaseModel):
    """Everything needed to rebuild, validate and serve a model version."""

    framework: Literal["torch", "sklearn", "onnx", "ensemble"] = "torch"
    architecture: str  # zoo name ("cnn", "mlp", ...) or "module:function"
    params: dict[str, Any] = Field(default_factory=dict)
    task: Literal["classification", "regression"] = "classification"
    input_shape: list[int]  # one sample, after preprocessing, e.g. [1, 28, 28] or [64]
    input_dtype: str = "float32"
    feature_names: list[str] | None = None  # raw input columns, for tabular data
    classes: list[Any] | None = None
    weights_file: str = "weights.safetensors"
    has_preprocessing: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)


def version_dir(name: str, version: int) -> str:
    return f"models/{name}/{version}"


def register_model(
    meta: MetadataStore,
    artifacts: ArtifactStore,
    name: str,
    spec: ModelSpec,
    *,
    weights: Mapping[str, Any] | None = None,
    weights_blob: bytes | None = None,
    preprocessing: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None,
    run_id: str | None = None,
    parent_id: int | None = None,
    dataset_version_id: int | None = None,
    aliases: Sequence[str] = ("candidate",),
    extra_files: Mapping[str, bytes] | None = None,
) -> m.ModelVersion:
    """Write a version's artifacts, then its metadata row; returns the registered version.

    ``weights`` is a torch state dict (saved as safetensors); ``weights_blob`` is the bytes
    of a non-torch model file named by ``spec.weights_file`` (skops or ONNX), or of sparse
    torch weights (``stratum.store.sparse``). ``extra_files`` (e.g. a compression report)
    are written beside them, before the row.
    """
    version = meta.next_model_version(name)
    base = version_dir(name, version)
    if weights is not None:
        from safetensors.torch import save as st_save_torch

        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        artifacts.put_bytes(f"{base}/{spec.weights_file}", st_save_torch(tensors))
    elif weights_blob is not None:
        artifacts.put_bytes(f"{base}/{spec.weights_file}", weights_blob)
    else:
        raise ValueError("register_model needs weights or weights_blob")
    spec = spec.model_copy(update={"has_preprocessing": preprocessing is not None})
    if preprocessing is not None:
        config, arrays = preprocessing
        artifacts.put_bytes(f"{base}/preprocessing.json", json.dumps(config).encode())
        artifacts.put_bytes(
            f"{base}/preprocessing.safetensors",
            st_save_np({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
        )
    for file_name, data in (extra_files or {}).items():
        artifacts.put_bytes(f"{base}/{file_name}", data)
    artifacts.put_bytes(f"{base}/spec.json", spec.model_dump_json(indent=2).encode())
    return meta.add_model_version(
        name, version=version, artifact_path=base, spec=spec.model_dump(mode="json"),
        metrics=spec.metrics, run_id=run_id, parent_id=parent_id,
        dataset_version_id=dataset_version_id, aliases=aliases,
    )


class LoadedModel(BaseModel):
    """A version's spec and raw artifact bytes, read and checksum-verified."""

    model_config = {"arbitrary_types_allowed": True}

    name: str
    version: int
    spec: ModelSpec
    weights_blob: bytes
    preprocessing: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None

    def torch_state_dict(self) -> dict[str, Any]:
        """The dense state dict; sparse (pruned) weights are densified here."""
        from safetensors.torch import load as st_load_torch

        from stratum.store import sparse

        if sparse.is_sparse(self.weights_blob):
            return sparse.densify(self.weights_blob)
        return st_load_torch(self.weights_blob)

    def onnx_graph(self) -> bytes:
        """The ONNX graph of an ``onnx`` version; a packed one (``sparse.pack_graph``) is
        inflated here."""
        from stratum.store import sparse

        return sparse.unpack_graph(self.weights_blob)


def load_model(meta: MetadataStore, artifacts: ArtifactStore, name: str,
               ref: str | int | None = None) -> LoadedModel:
    """Resolve ``name@ref`` (version, alias or latest) and read its verified artifacts."""
    mv = meta.model_version(name, ref)
    spec = ModelSpec.model_validate(mv.spec)
    base = mv.artifact_path
    blob = artifacts.get_bytes(f"{base}/{spec.weights_file}")
    pre = None
    if spec.has_preprocessing:
        config = json.loads(artifacts.get_bytes(f"{base}/preprocessing.json"))
        arrays = st_load_np(artifacts.get_bytes(f"{base}/preprocessing.safetensors"))
        pre = (config, arrays)
    return LoadedModel(name=name, version=mv.version, spec=spec, weights_blob=blob,
                       preprocessing=pre)


def parse_ref(text: str) -> tuple[str, str | None]:
    """``"mnist@production"`` → ``("mnist", "production")``; ``"mnist"`` → ``("mnist", None)``."""
    name, _, ref = text.partition("@")
    return name, (ref or None)
