"""Models: the zoo and every framework's build and load from a registered spec, in one place.

Training builds networks and estimators here; serving and compression load predictors;
the online learner loads models it can fine-tune.

>>> from stratum.models import build_model
>>> build_model("mlp", [4], 3, hidden=[8]).__class__.__name__
'Sequential'
"""

from __future__ import annotations

from stratum.models.frameworks import (
    FRAMEWORKS,
    PredictOptions,
    Predictor,
    load_predictor,
    load_trainable,
    resolve_framework,
)
from stratum.models.outputs import num_outputs, softmax, spec_outputs
from stratum.models.trainable import FineTune, Trainable
from stratum.models.zoo import ZOO, build_model, load_network

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
