"""The replica's runtime: a ``stratum.models`` predictor run as the serve settings say.

``x`` is a model-ready float batch ``(n, *spec.input_shape)``. ``y`` is ``(n, k)`` class
probabilities for a classifier (columns in ``spec.classes`` order) or ``(n,)`` values for
a regressor — the same contract for PyTorch, ONNX Runtime and scikit-learn, so nothing in
the replica knows which one runs.
"""

from __future__ import annotations

from pathlib import Path

from stratum.config import ServeSettings
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
        cache_dir=cache_dir))


__all__ = ["Runtime", "load_runtime"]
