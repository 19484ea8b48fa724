"""The runtime seam: one ``predict(x) -> y`` per framework, chosen from the model spec.

``x`` is a model-ready float batch ``(n, *spec.input_shape)``. ``y`` is ``(n, k)`` class
probabilities for a classifier (columns in ``spec.classes`` order) or ``(n,)`` values for
a regressor — the same contract for PyTorch, ONNX Runtime and scikit-learn, so nothing
above this module knows which one runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from stratum.config import ServeSettings
from stratum.errors import ConfigError
from stratum.store import LoadedModel


class Runtime(Protocol):
    framework: str

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def load_runtime(loaded: LoadedModel, settings: ServeSettings,
                 cache_dir: Path | None = None) -> Runtime:
    """Rebuild the model of a registered version for inference; ``cache_dir`` keeps derived
    artifacts (a torch net's ONNX export) across restarts.

    >>> # load_runtime(load_model(meta, artifacts, "mnist", "3"), settings.serve)
    """
    framework = loaded.spec.framework
    if framework == "torch":
        from stratum.serve.runtimes.torch_rt import TorchRuntime

        return TorchRuntime(loaded, compile=settings.compile,
                            channels_last=settings.channels_last,
                            backend="eager" if settings.compile else settings.torch_backend,
                            threads=settings.runtime_threads, cache_dir=cache_dir)
    if framework == "onnx":
        from stratum.serve.runtimes.onnx_rt import OnnxRuntime

        return OnnxRuntime(loaded, threads=settings.runtime_threads)
    if framework == "sklearn":
        from stratum.serve.runtimes.sklearn_rt import SklearnRuntime

        return SklearnRuntime(loaded)
    raise ConfigError(f"model {loaded.name} v{loaded.version}: unknown framework {framework!r}")


def num_outputs(loaded: LoadedModel) -> int:
    spec = loaded.spec
    if spec.task == "regression":
        return 1
    if not spec.classes:
        raise ConfigError(
            f"model {loaded.name} v{loaded.version} is a classifier without classes in its spec",
            hint="register it with ModelSpec(classes=[...])",
        )
    return len(spec.classes)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
