"""Strategies: how one worker of the one training loop cooperates with the others.

The seam is the ``Strategy`` protocol below; the loop (``loop.py``) calls only these
methods, and a strategy is a small object, not a Trainer subclass. Where the future ones
plug in:

- ``parameter_server``: ``optimizer_step`` pushes gradients to the server rank and pulls
  fresh parameters instead of stepping locally.
- ``fsdp``: ``prepare`` wraps the model in FullyShardedDataParallel; ``state_dict`` gathers
  the full (unsharded) weights for checkpoints and registration.
- ``ensemble``: ``prepare`` keeps K independent models; no gradient all-reduce.
- ``fedavg``: no per-step all-reduce; ``end_epoch`` averages parameters across workers,
  each of which only ever reads its own shards (the clients never pool data).
- Ray: a different *launcher* (``launcher.py``) starts the same worker entry point; the
  strategy only reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT like under torchrun.

Register a new one in ``STRATEGIES``; ``TrainConfig.strategy`` is validated against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stratum.errors import ConfigError


@dataclass(frozen=True)
class WorkerEnv:
    """Where this process sits in the group; read from torchrun-style env variables."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29_500

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WorkerEnv:
        e = os.environ if env is None else env
        return cls(
            rank=int(e.get("RANK", 0)), world=int(e.get("WORLD_SIZE", 1)),
            local_rank=int(e.get("LOCAL_RANK", e.get("RANK", 0))),
            master_addr=e.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(e.get("MASTER_PORT", 29_500)),
        )


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


class Strategy(Protocol):
    """What the training loop asks of a strategy (see the module docstring)."""

    name: str
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...
    def prepare(self, model: nn.Module) -> nn.Module: ...
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]: ...
    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def end_epoch(self, model: nn.Module) -> None: ...
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...
    def all_reduce_max(self, value: int) -> int: ...
    def gather(self, obj: Any) -> list[Any]: ...
    def close(self) -> None: ...


class Single:
    """One process; every collective is the identity."""

    name = "single"

    def __init__(self, env: WorkerEnv | None = None) -> None:
        self.rank, self.world = 0, 1
        self.device = pick_device(env.local_rank if env else 0)

    @property
    def is_main(self) -> bool:
        return True

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return dict(model.state_dict())

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def end_epoch(self, model: nn.Module) -> None:
        return None

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

    def __init__(self, env: WorkerEnv) -> None:
        super().__init__(env)
        self.rank, self.world = env.rank, env.world
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            # A short timeout: when a peer dies the survivors must fail, not hang, so the
            # launcher can restart the group.
            dist.init_process_group(
                backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                rank=env.rank, world_size=env.world, timeout=timedelta(seconds=120),
            )

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
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# name -> (factory, needs several processes). New strategies register here.
STRATEGIES: dict[str, tuple[Callable[[WorkerEnv], Strategy], bool]] = {
    "single": (Single, False),
    "ddp": (DDP, True),
}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {name!r}", hint=f"choose one of {', '.join(sorted(STRATEGIES))}"
        )
    return name


def make_strategy(name: str, env: WorkerEnv) -> Strategy:
    return STRATEGIES[check_strategy(name)][0](env)


def is_distributed(name: str) -> bool:
    return STRATEGIES[check_strategy(name)][1]
