"""The one place that knows the frameworks: from a registered spec to a model that predicts
(serving, compression) or one that learns more (the online learner), and from a training
config's model name to its framework.

Each framework is one row of ``FRAMEWORKS``; nothing above this package branches on
``spec.framework``. The predictor modules are imported when a version of that framework is
loaded, so a scikit-learn replica never pays for torch's ONNX exporter, and vice versa;
and a torch version whose ONNX export is cached is served without importing torch at all
(``stratum.models.exported``), which is most of a replica's start-up otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from stratum.errors import ConfigError
from stratum.models.estimators import SKLEARN_MODELS
from stratum.store import LoadedModel

if TYPE_CHECKING:
    from stratum.models.trainable import Trainable


class Predictor(Protocol):
    """``predict(x) -> y``: ``x`` a model-ready float batch ``(n, *spec.input_shape)``, ``y``
    ``(n, k)`` class probabilities (``spec.classes`` order) or ``(n,)`` values."""

    framework: str
    backend: str  # what executes it: "onnxruntime", "eager", "sklearn"
    fallback_reason: str | None  # why it is not on the backend asked for, if it is not

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PredictOptions:
    """How to run a predictor; a replica fills this from ``ServeSettings``."""

    torch_backend: str = "eager"  # or "onnxruntime": export, check, cache, run in ORT
    compile: bool = False  # torch.compile the eager net (start-up seconds for speed)
    channels_last: bool = True  # NHWC layout for conv nets on CPU
    threads: int | None = None  # intra-op threads of the session
    cache_dir: Path | None = None  # keeps derived artifacts (ONNX exports) across restarts
    device: str = "cpu"  # "cuda": eager torch on the GPU (see ``serve.device``)
    bf16: bool = False  # autocast the GPU forward pass to bfloat16


def _torch_predictor(loaded: LoadedModel, o: PredictOptions) -> Predictor:
    if o.device == "cpu" and o.torch_backend == "onnxruntime" and not o.compile \
            and o.cache_dir is not None:
        from stratum.models.exported import from_cache

        cached = from_cache(loaded, o.threads, o.cache_dir)
        if cached is not None:
            return cached
    from stratum.models.torch_predictor import TorchPredictor

    return TorchPredictor(loaded, compile=o.compile, channels_last=o.channels_last,
                          backend="eager" if o.compile or o.device != "cpu" else o.torch_backend,
                          threads=o.threads, cache_dir=o.cache_dir, device=o.device,
                          bf16=o.bf16)


def _onnx_predictor(loaded: LoadedModel, o: PredictOptions) -> Predictor:
    from stratum.models.onnx_predictor import OnnxPredictor

    return OnnxPredictor(loaded, threads=o.threads)


def _sklearn_predictor(loaded: LoadedModel, o: PredictOptions) -> Predictor:
    from stratum.models.sklearn_predictor import SklearnPredictor

    return SklearnPredictor(loaded)


def _ensemble_predictor(loaded: LoadedModel, o: PredictOptions) -> Predictor:
    from stratum.models.ensemble import EnsemblePredictor

    return EnsemblePredictor(loaded, o, load_predictor)  # each member by its own row


def _torch_trainable(loaded: LoadedModel) -> Trainable:
    from stratum.models.trainable import TorchModel

    return TorchModel.load(loaded)


def _sklearn_trainable(loaded: LoadedModel) -> Trainable:
    from stratum.models.trainable import SklearnModel

    return SklearnModel.load(loaded)


@dataclass(frozen=True)
class Framework:
    name: str
    predictor: Callable[[LoadedModel, PredictOptions], Predictor]
    trainable: Callable[[LoadedModel], Trainable] | None  # None: inference only


FRAMEWORKS: dict[str, Framework] = {
    "torch": Framework("torch", _torch_predictor, _torch_trainable),
    "onnx": Framework("onnx", _onnx_predictor, None),
    "sklearn": Framework("sklearn", _sklearn_predictor, _sklearn_trainable),
    "ensemble": Framework("ensemble", _ensemble_predictor, None),
}


def framework_of(loaded: LoadedModel) -> Framework:
    fw = FRAMEWORKS.get(loaded.spec.framework)
    if fw is None:
        raise ConfigError(f"model {loaded.name} v{loaded.version}: unknown framework "
                          f"{loaded.spec.framework!r}", hint=f"one of {', '.join(FRAMEWORKS)}")
    return fw


def load_predictor(loaded: LoadedModel, options: PredictOptions | None = None) -> Predictor:
    """Rebuild a registered version for inference.

    >>> # load_predictor(load_model(meta, artifacts, "mnist", "3"), PredictOptions())
    """
    return framework_of(loaded).predictor(loaded, options or PredictOptions())


def load_trainable(loaded: LoadedModel) -> Trainable:
    """Rebuild a registered version as a model that can be fine-tuned."""
    fw = framework_of(loaded)
    if fw.trainable is None:
        raise ConfigError(f"{loaded.name} v{loaded.version} is a {fw.name} model and cannot "
                          "learn; online learning needs its torch or scikit-learn source "
                          "version")
    return fw.trainable(loaded)


def resolve_framework(model_name: str, declared: str = "auto") -> str:
    """The framework a training config means: zoo names say which; ``module:function``
    is torch unless declared ``sklearn``."""
    if declared != "auto":
        if declared not in FRAMEWORKS:
            raise ConfigError(f"unknown framework {declared!r}",
                              hint=f"one of auto, {', '.join(FRAMEWORKS)}")
        return declared
    return "sklearn" if model_name in SKLEARN_MODELS else "torch"


__all__ = ["FRAMEWORKS", "Framework", "PredictOptions", "Predictor", "framework_of",
           "load_predictor", "load_trainable", "resolve_framework"]
