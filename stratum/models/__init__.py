"""Models: the zoo and every framework's build and load from a registered spec, in one place.

Training builds networks and estimators here; serving and compression load predictors;
the online learner loads models it can fine-tune.

>>> from stratum.models import build_model
>>> build_model("mlp", [4], 3, hidden=[8]).__class__.__name__
'Sequential'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratum.lazy import lazy_exports
from stratum.models.frameworks import (
    FRAMEWORKS,
    PredictOptions,
    Predictor,
    load_predictor,
    load_trainable,
    resolve_framework,
)
from stratum.models.outputs import num_outputs, softmax, spec_outputs

if TYPE_CHECKING:
    from stratum.models.trainable import FineTune, Trainable
    from stratum.models.zoo import ZOO, build_model, load_network

# Names whose modules import torch (~1.1 s): loaded on first use, so that a replica serving
# a cached ONNX export, or a scikit-learn model, never imports it.
_LAZY = {
    "FineTune": "stratum.models.trainable",
    "Trainable": "stratum.models.trainable",
    "ZOO": "stratum.models.zoo",
    "build_model": "stratum.models.zoo",
    "load_network": "stratum.models.zoo",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "FRAMEWORKS",
    "ZOO",
    "FineTune",
    "PredictOptions",
    "Predictor",
    "Trainable",
    "build_model",
    "load_network",
    "load_predictor",
    "load_trainable",
    "num_outputs",
    "resolve_framework",
    "softmax",
    "spec_outputs",
]
