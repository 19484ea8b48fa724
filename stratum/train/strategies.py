"""Strategies: how one worker of the one training loop cooperates with the others.

The seam is the ``Strategy`` protocol below; the loop (``loop.py``) calls only these
methods, and a strategy is a small object, not a Trainer subclass. ``Single`` and ``DDP``
live here; the others each have a module and plug in through the same methods:

- ``parameter_server`` (``param_server.py``): ``optimizer_step`` pushes gradients to the
  server processes and pulls fresh parameters instead of stepping locally.
- ``fsdp`` (``fsdp.py``): ``prepare`` shards the model with ``fully_shard``;
  ``checkpoint_files`` writes each rank's shard with torch.distributed.checkpoint;
  ``state_dict`` gathers the full weights for registration.
- ``fedavg`` (``fedavg.py``): no per-step all-reduce; ``load_data`` picks the client's
  rows, ``start_epoch`` the round's clients, ``end_epoch`` averages by sample count.
- ``ensemble`` (``ensemble.py``): member processes, each running this loop with ``Single``.
- Ray: a different *launcher* (``launcher.py``) starts the same worker entry point; the
  strategy only reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT like under torchrun.

``registry.py`` names them; ``TrainConfig.strategy`` is validated against it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from stratum.train.checkpoint import Checkpoint
    from stratum.train.loop import Shards

log = logging.getLogger(__name__)
# (worker, world) -> that slice of the dataset's shards: what a strategy reads its rows with
Loader = Callable[[int, int], "Shards"]


@dataclass(frozen=True)
class WorkerEnv:
    """Where this process sits in the group; read from torchrun-style env variables."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29_500
    local_world: int = 1  # processes of the group on this node

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WorkerEnv:
        e = os.environ if env is None else env
        return cls(
            rank=int(e.get("RANK", 0)), world=int(e.get("WORLD_SIZE", 1)),
            local_rank=int(e.get("LOCAL_RANK", e.get("RANK", 0))),
            master_addr=e.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(e.get("MASTER_PORT", 29_500)),
            local_world=int(e.get("LOCAL_WORLD_SIZE", e.get("WORLD_SIZE", 1))),
        )


def pick_device(local_rank: int = 0, local_world: int = 1, share: bool = True
                ) -> torch.device:
    """The GPU of this process (local ranks round-robin over the GPUs), else the CPU. A
    process of an NCCL group (``share=False``) needs a GPU of its own: NCCL refuses two
    ranks on one GPU ("Duplicate GPU detected"), so more workers than GPUs train on the
    CPU over gloo, and the log says so."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and (share or local_world <= gpus):
        return torch.device("cuda", local_rank % gpus)
    if gpus and local_rank == 0:
        log.warning("%d workers on this node and %d GPU(s): NCCL cannot share a GPU between "
                    "workers, so they train on the CPU; use --workers %d or fewer for the "
                    "GPU", local_world, gpus, gpus)
    return torch.device("cpu")


class Strategy(Protocol):
    """What the training loop asks of a strategy (see the module docstring)."""

    name: str
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...
    def load_data(self, load: Loader) -> Shards:
        """The rows this process trains and validates on."""
        ...
    def prepare(self, model: nn.Module) -> nn.Module: ...
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full weights (a collective where they are sharded; main rank's are used)."""
        ...
    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def start_epoch(self, epoch: int) -> None: ...
    def end_epoch(self, model: nn.Module) -> None: ...
    def checkpoint_files(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, bytes] | None:
        """None: the main rank saves model and optimizer state whole. Otherwise (a
        collective) this rank's files of a sharded checkpoint, by name."""
        ...
    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                checkpoint: Checkpoint) -> None:
        """Load what ``checkpoint_files`` wrote (``checkpoint.files``, ``.read(name)``)."""
        ...
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...
    def all_reduce_max(self, value: int) -> int: ...
    def gather(self, obj: Any) -> list[Any]: ...
    def close(self) -> None: ...


class Single:
    """One process; every collective is the identity."""

    name = "single"

    def __init__(self, env: WorkerEnv | None = None) -> None:
        self.rank, self.world = 0, 1
        # one process alone (an ensemble member too) may share a GPU with others
        self.device = pick_device(env.local_rank if env else 0)

    @property
    def is_main(self) -> bool:
        return True

    def load_data(self, load: Loader) -> Shards:
        return load(self.rank, self.world)

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.state_dict())

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def start_epoch(self, epoch: int) -> None:
        return None

    def end_epoch(self, model: nn.Module) -> None:
        return None

    def checkpoint_files(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, bytes] | None:
        return None

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                checkpoint: Checkpoint) -> None:
        raise NotImplementedError(f"{self.name} checkpoints hold the whole state")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_reduce_max(self, value: int) -> int:
        return value

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def close(self) -> None:
        return None


class DDP(Single):
    """Data parallel: gradients all-reduced by DistributedDataParallel (gloo / nccl)."""

    name = "ddp"
    gpu_per_rank = True  # its collectives run over NCCL on a GPU (see pick_device)

    def __init__(self, env: WorkerEnv) -> None:
        super().__init__(env)
        self.rank, self.world = env.rank, env.world
        self.device = pick_device(env.local_rank, env.local_world,
                                  share=not self.gpu_per_rank)
        init_group(env, self.device)
        # the processes that train; None: all of them (a parameter server's are fewer)
        self.group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        return dict(inner.state_dict())

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def all_reduce_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_group(env: WorkerEnv, device: torch.device) -> None:
    """Join the process group of every process of the run (once; Ray Train makes it)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # A short timeout: when a peer dies the survivors must fail, not hang, so the
        # launcher can restart the group.
        dist.init_process_group(
            backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank, world_size=env.world, timeout=timedelta(seconds=120),
        )
