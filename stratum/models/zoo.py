"""The model zoo: torch architectures by name, or a user's ``module:function``.

``build_model(architecture, input_shape, num_outputs, **params)`` builds a fresh network;
``load_network(loaded)`` rebuilds a registered version's network with its weights. They are
the one seam that training, compression, serving and the online learner use.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from stratum.errors import ConfigError, IntegrityError
from stratum.models.outputs import spec_outputs
from stratum.store import LoadedModel


def linear(input_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Linear/logistic regression and linear SVM share this network; the loss differs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_outputs))


def mlp(input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def cnn(input_shape: Sequence[int], num_outputs: int, dropout: float = 0.25,
        channels: Sequence[int] = (32, 64), hidden: int = 128) -> nn.Module:
    """conv32-conv64-dense128: the classic MNIST network.

    Each conv is followed by a 2x2 max-pool (LeNet-style) rather than pooling once after
    both: the same accuracy on MNIST for about a third of the compute, which matters on
    CPU-only machines. ``channels`` and ``hidden`` set the widths (a distilled student or
    a structurally pruned net is narrower); the defaults are the classic network.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"cnn needs image input (C, H, W), got shape {list(input_shape)}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ConfigError(f"cnn needs images of at least 4x4, got {h}x{w}")
    if len(channels) != 2 or min(*channels, hidden) < 1:
        raise ConfigError(f"cnn needs two positive channel counts and hidden >= 1, got "
                          f"channels={list(channels)}, hidden={hidden}")
    c1, c2 = (int(n) for n in channels)
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(dropout), nn.Flatten(),
        nn.Linear(c2 * (h // 2 // 2) * (w // 2 // 2), hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_outputs),
    )


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet(input_shape: Sequence[int], num_outputs: int,
           widths: Sequence[int] = (16, 32, 64)) -> nn.Module:
    """A small ResNet (one basic block per stage) for small images."""
    if len(input_shape) != 3:
        raise ConfigError(f"resnet needs image input (C, H, W), got shape {list(input_shape)}")
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]), nn.ReLU(),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        layers.append(_Block(cin, w, 1 if i == 0 else 2))
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_outputs)]
    return nn.Sequential(*layers)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "linear": linear,
    "logistic": linear,
    "linear_svm": linear,
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
}


def build_model(architecture: str, input_shape: Sequence[int], num_outputs: int,
                **params: Any) -> nn.Module:
    """Build a zoo network by name, or call ``module:function(input_shape, num_outputs, **p)``.

    >>> build_model("mlp", [64], 10, hidden=[32]).__class__.__name__
    'Sequential'
    """
    if ":" in architecture:
        mod_name, _, fn_name = architecture.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import model function {architecture!r}: {exc}") from exc
        model = fn(input_shape=list(input_shape), num_outputs=num_outputs, **params)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{architecture} returned {type(model).__name__}, not nn.Module")
        return model
    if architecture not in ZOO:
        raise ConfigError(
            f"unknown model {architecture!r}",
            hint=f"choose one of {', '.join(sorted(ZOO))} or give module:function",
        )
    try:
        return ZOO[architecture](list(input_shape), num_outputs, **params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for model {architecture!r}: {exc}") from exc


def load_network(loaded: LoadedModel) -> nn.Module:
    """The network of a registered torch version with its weights, in eval mode."""
    spec = loaded.spec
    net = build_model(spec.architecture, spec.input_shape, spec_outputs(loaded), **spec.params)
    try:
        net.load_state_dict(loaded.torch_state_dict())
    except (RuntimeError, KeyError) as exc:
        raise IntegrityError(
            f"model {loaded.name} v{loaded.version}: weights do not fit "
            f"{spec.architecture} {spec.params}: {exc}"
        ) from exc
    return net.eval()
