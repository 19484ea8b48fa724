"""Build the parts a run needs from its config: network, loss, optimizer, schedule.

Also the dry run: one forward pass on a real batch before any training, so a model that
does not fit the dataset's input shape fails with a ConfigError, not mid-epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from stratum.errors import ConfigError
from stratum.models import build_model
from stratum.train.config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_network(cfg: TrainConfig, input_shape: Sequence[int], outputs: int) -> nn.Module:
    return build_model(cfg.model.name, list(input_shape), outputs, **cfg.model.params)


def dry_run(model: nn.Module, sample: np.ndarray, outputs: int, what: str) -> None:
    """Forward two real samples; a shape mismatch becomes a ConfigError naming both sides."""
    x = torch.from_numpy(np.ascontiguousarray(sample[:2]))
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(device))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"model {what} does not accept this dataset's input of shape "
            f"{list(sample.shape[1:])}: {str(exc).splitlines()[0]}",
            hint="pick a model that fits the input (cnn/resnet need images C,H,W) "
                 "or change its params",
        ) from exc
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[1] != outputs:
        raise ConfigError(
            f"model {what} returns shape {list(out.shape)} for a batch of {len(x)}, "
            f"expected [{len(x)}, {outputs}]"
        )


def build_loss(cfg: TrainConfig, task: str) -> LossFn:
    kind = cfg.loss
    if kind == "auto":
        if task == "regression":
            kind = "mse"
        else:
            kind = "hinge" if cfg.model.name == "linear_svm" else "cross_entropy"
    if task == "regression" and kind != "mse":
        raise ConfigError(f"loss {kind!r} needs a classification dataset; use mse")
    if task == "classification" and kind == "mse":
        raise ConfigError("loss 'mse' needs a regression dataset")
    if kind == "mse":
        return lambda out, y: nn.functional.mse_loss(out.reshape(-1), y)
    if kind == "hinge":
        return nn.MultiMarginLoss()
    return nn.CrossEntropyLoss()


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def build_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step multiplier; plain functions so its state_dict holds only numbers."""
    s = cfg.schedule
    total = max(1, steps_per_epoch * cfg.epochs)

    def factor(step: int) -> float:
        if s.warmup_steps and step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.name == "cosine":
            t = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if s.name == "step":
            return float(s.gamma ** (step // (steps_per_epoch * s.step_epochs)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
