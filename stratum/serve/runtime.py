"""The replica's runtime: a ``stratum.models`` predictor run as the serve settings say.

``x`` is a model-ready float batch ``(n, *spec.input_shape)``. ``y`` is ``(n, k)`` class
probabilities for a classifier (columns in ``spec.classes`` order) or ``(n,)`` values for
a regressor — the same contract for PyTorch, ONNX Runtime and scikit-learn, so nothing in
the replica knows which one runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from stratum.config import ServeSettings
from stratum.errors import ConfigError
from stratum.models import PredictOptions, Predictor, load_predictor
from stratum.store import LoadedModel

Runtime = Predictor


def load_runtime(loaded: LoadedModel, settings: ServeSettings,
                 cache_dir: Path | None = None) -> Runtime:
    """Rebuild the model of a registered version for inference; ``cache_dir`` keeps derived
    artifacts (a torch net's ONNX export) across restarts.

    >>> # load_runtime(load_model(meta, artifacts, "mnist", "3"), settings.serve)
    """
    return load_predictor(loaded, PredictOptions(
        torch_backend=settings.torch_backend, compile=settings.compile,
        channels_last=settings.channels_last, threads=settings.runtime_threads,
        cache_dir=cache_dir, device=replica_device(settings.device), bf16=settings.bf16))


def replica_device(wanted: str) -> str:
    """``serve.device`` made concrete: ``auto`` is ``cuda`` when this process was given a
    GPU. Ray names a replica's GPUs in CUDA_VISIBLE_DEVICES (empty when it asked for
    none); without it, a GPU is one the driver exposes. torch is imported only then, so
    a CPU replica's fast start (a cached ONNX graph, no torch) is kept."""
    if wanted != "auto":
        if wanted == "cuda":
            _require_cuda()
        return wanted
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    if visible is None and not os.path.exists("/dev/nvidiactl"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("serve.device is cuda and this replica sees no GPU",
                          hint="deploy with --gpus N on a Ray cluster with GPUs, or set "
                               "serve.device to auto or cpu")


__all__ = ["Runtime", "load_runtime", "replica_device"]
