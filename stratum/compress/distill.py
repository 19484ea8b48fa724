"""Distillation: a smaller student trained on the teacher's soft labels and the true ones.

The teacher is any registered version (torch, ONNX or scikit-learn): its class
probabilities ``p`` on the training rows are the soft labels, so its logits are taken as
``log p`` (softmax of ``log p / T`` is ``p`` sharpened or softened by T; for a torch
teacher ``log softmax(z)`` differs from ``z`` by a per-row constant, which the softmax
ignores). The student is a zoo network (the parent's architecture narrowed by a width
factor, or any zoo name with its parameters) trained by the parent's own loop with

    loss = alpha · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 - alpha) · CE(s, y)

(Hinton et al., 2015; T² keeps the soft term's gradients on the scale of the hard one).
For a regressor the soft term is the squared error to the teacher's prediction. The
loop gets the targets as one float row per sample, ``[y, teacher...]``; validation rows
carry plain labels and get the plain loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from stratum.errors import ConfigError
from stratum.models import Predictor

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def student_params(architecture: str, params: dict[str, Any], width: float
                   ) -> dict[str, Any]:
    """The parent's zoo parameters with every width multiplied by ``width``."""
    if not 0 < width <= 1:
        raise ConfigError(f"student width must be in (0, 1], got {width}")

    def narrow(n: int) -> int:
        return max(1, math.ceil(int(n) * width))

    out = dict(params)
    if architecture == "mlp":
        out["hidden"] = [narrow(n) for n in params.get("hidden", (256, 128))]
    elif architecture == "cnn":
        out["channels"] = [narrow(n) for n in params.get("channels", (32, 64))]
        out["hidden"] = narrow(params.get("hidden", 128))
    elif architecture == "resnet":
        out["widths"] = [narrow(n) for n in params.get("widths", (16, 32, 64))]
    else:
        raise ConfigError(f"no width parameter for {architecture!r}",
                          hint="name the student: --distill mlp --student-params "
                               "'{\"hidden\": [64]}'")
    return out


def targets(teacher: Predictor, x: np.ndarray, y: np.ndarray, task: str) -> np.ndarray:
    """``[y, teacher logits...]`` per training row (float32)."""
    out = np.concatenate([teacher.predict(x[i:i + 512]) for i in range(0, len(x), 512)])
    soft = np.log(np.clip(out, 1e-8, 1.0)) if task == "classification" else out.reshape(-1, 1)
    return np.concatenate([y.reshape(-1, 1).astype(np.float32), soft.astype(np.float32)], 1)


def loss(task: str, temperature: float, alpha: float) -> LossFn:
    """The distillation loss over ``targets`` rows; plain labels get the plain loss."""
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"temperature must be > 0 and alpha in [0, 1], got "
                          f"T={temperature}, alpha={alpha}")
    t2 = temperature * temperature

    def classify(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1:
            return nn.functional.cross_entropy(out, target)
        y, teacher = target[:, 0].long(), target[:, 1:]
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(out / temperature, dim=1),
            nn.functional.log_softmax(teacher / temperature, dim=1),
            reduction="batchmean", log_target=True)
        return alpha * t2 * soft + (1 - alpha) * nn.functional.cross_entropy(out, y)

    def regress(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = out.reshape(-1)
        if target.ndim == 1:
            return nn.functional.mse_loss(pred, target)
        return (alpha * nn.functional.mse_loss(pred, target[:, 1])
                + (1 - alpha) * nn.functional.mse_loss(pred, target[:, 0]))

    return classify if task == "classification" else regress


__all__ = ["loss", "student_params", "targets"]
