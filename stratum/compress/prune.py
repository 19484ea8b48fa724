"""Pruning: global magnitude pruning (sparse weights), or structured pruning (a narrower
dense network).

**Magnitude** (``torch.nn.utils.prune.global_unstructured``, L1): the fraction S of all
conv and dense weights with the smallest magnitude, ranked across layers, is set to zero;
biases are kept. The pruning masks stay on the network (as forward pre-hooks) while it is
fine-tuned, so the pruned weights get no gradient and stay zero; then they are made
permanent and the weights are stored sparsely (``stratum.store.sparse``: bitmask +
values), which is what makes the artifact shrink. The served network is dense again.

**Structured**: in every conv/dense layer but the output one, the fraction S of output
units (neurons, or channels) with the smallest L2 norm of their weights is removed, with
the matching inputs of the next layer (through a ``Flatten``: the channel's whole block
of features). The result is the same zoo architecture with smaller widths (``mlp``'s
``hidden``, ``cnn``'s ``channels`` and ``hidden``): a smaller dense network that runs
faster, stored as ordinary safetensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from stratum.errors import ConfigError

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_PASSIVE = (nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Flatten, nn.Identity, nn.Tanh, nn.GELU)


def check_sparsity(sparsity: float) -> float:
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"sparsity must be in (0, 1), got {sparsity}",
                          hint="e.g. --prune 0.8 removes 80% of the weights")
    return float(sparsity)


def weighted_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, WEIGHTED)]


def magnitude(net: nn.Module, sparsity: float) -> None:
    """Mask the ``sparsity`` fraction of smallest weights (global ranking), in place; the
    masks stay on until ``make_permanent``."""
    layers = weighted_layers(net)
    if not layers:
        raise ConfigError("this network has no conv or dense layers to prune")
    prune.global_unstructured([(m, "weight") for m in layers],
                              pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(net: nn.Module) -> nn.Module:
    for m in weighted_layers(net):
        if prune.is_pruned(m):
            prune.remove(m, "weight")
    return net


def sparsity_of(net: nn.Module) -> float:
    """The fraction of zeros among the conv and dense weights."""
    zeros = total = 0
    for m in weighted_layers(net):
        w = m.get_parameter("weight").detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


# -- structured --------------------------------------------------------------------------

def _widths(architecture: str, layers: list[tuple[int, bool]]) -> dict[str, Any]:
    """The zoo parameters that rebuild a network whose weighted layers have these
    (outputs, is a conv)."""
    if architecture == "mlp":
        return {"hidden": [n for n, _ in layers[:-1]]}
    convs = [n for n, conv in layers if conv]
    return {"channels": convs, "hidden": layers[len(convs)][0]}


def check_structured(architecture: str, net: nn.Module) -> None:
    if architecture not in ("mlp", "cnn") or not isinstance(net, nn.Sequential):
        raise ConfigError(f"structured pruning knows the zoo's mlp and cnn, not "
                          f"{architecture!r}", hint="use magnitude pruning (no --structured)")
    odd = [type(m).__name__ for m in net if not isinstance(m, WEIGHTED + _PASSIVE)]
    if odd:
        raise ConfigError(f"structured pruning cannot slice {', '.join(odd)} layers")


def structured(net: nn.Module, architecture: str, sparsity: float
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The pruned network's state dict and the zoo parameters that rebuild it."""
    check_structured(architecture, net)
    assert isinstance(net, nn.Sequential)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    names = {id(m): n for n, m in net.named_children()}
    layers = [m for m in net if isinstance(m, WEIGHTED)]
    keep_in: torch.Tensor | None = None
    sizes: list[tuple[int, bool]] = []
    for i, layer in enumerate(layers):
        key = names[id(layer)]
        w = state[f"{key}.weight"]
        if keep_in is not None:
            w = w[:, _inputs(keep_in, w.shape[1], layers[i - 1])]
        if i < len(layers) - 1:
            norms = w.reshape(w.shape[0], -1).norm(dim=1)
            n_keep = max(1, math.ceil(w.shape[0] * (1 - sparsity)))
            keep_in = norms.topk(n_keep).indices.sort().values
            w = w[keep_in]
            if f"{key}.bias" in state:
                state[f"{key}.bias"] = state[f"{key}.bias"][keep_in]
        state[f"{key}.weight"] = w.contiguous()
        sizes.append((int(w.shape[0]), w.ndim == 4))
    return state, _widths(architecture, sizes)


def _inputs(keep: torch.Tensor, fan_in: int, previous: nn.Module) -> torch.Tensor:
    """Input indices of a layer that follow the kept outputs of ``previous``: one each,
    or a block per channel when a conv's maps were flattened into a dense layer."""
    units = int(previous.get_parameter("weight").shape[0])
    if fan_in == units:
        return keep
    block = fan_in // units
    return (keep[:, None] * block + torch.arange(block)[None, :]).reshape(-1)



__all__ = ["check_sparsity", "check_structured", "magnitude", "make_permanent",
           "sparsity_of", "structured"]
