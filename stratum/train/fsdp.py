"""``fsdp``: the model sharded across the workers with PyTorch's ``fully_shard`` (FSDP2).

Each worker holds 1/N of every parameter, of its gradient and of the optimizer state
(gloo on CPU, nccl on GPU); a forward or backward pass all-gathers one layer at a time and
frees it again, and gradients are reduce-scattered. Every layer that owns parameters is
its own unit, then the root.

Checkpoints are sharded: each rank writes its own shard of the model and optimizer state
with torch.distributed.checkpoint (``dcp.save``) into a private staging folder, publishes
those files to the artifact store, and the main rank's manifest names them all. Loading
stages every file back and calls ``dcp.load``, which would also reshard onto another
number of workers. The registered weights are the full model, gathered once at the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard

from stratum.train.strategies import DDP, WorkerEnv

if TYPE_CHECKING:
    from stratum.train.checkpoint import Checkpoint
    from stratum.train.config import TrainConfig

PREFIX = "dcp-"  # artifact names of the dcp files (theirs start with "." or "__")


class FSDP(DDP):
    name = "fsdp"

    def __init__(self, env: WorkerEnv, cfg: TrainConfig | None = None) -> None:
        super().__init__(env)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        for child in model.children():
            if any(True for _ in child.parameters()):
                fully_shard(child)
        fully_shard(model)
        return model

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # a collective; the full weights land on rank 0 only, in CPU memory
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}

    def checkpoint_files(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, bytes] | None:
        msd, osd = get_state_dict(model, optimizer)
        with tempfile.TemporaryDirectory(prefix="stratum-dcp-") as tmp:
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
            return {PREFIX + p.name.lstrip("."): p.read_bytes()
                    for p in sorted(Path(tmp).iterdir()) if p.is_file()}

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                checkpoint: Checkpoint) -> None:
        with tempfile.TemporaryDirectory(prefix="stratum-dcp-") as tmp:
            for name in checkpoint.files:
                if name.startswith(PREFIX):
                    plain = name.removeprefix(PREFIX)
                    (Path(tmp) / (plain if plain.startswith("__") else "." + plain)
                     ).write_bytes(checkpoint.read(name))
            msd, osd = get_state_dict(model, optimizer)
            state: dict[str, Any] = {"model": msd, "optim": osd}
            dcp.load(state, checkpoint_id=tmp)
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
