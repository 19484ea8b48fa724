"""``fedavg``: federated averaging. Each worker is a client that trains on its own rows
only; what leaves a client is its weights, never data.

One loop epoch is one round: the round's clients (a seeded ``fraction`` of them, the same
choice on every process) train ``local_epochs`` passes over their rows from the global
weights, then every client's weights are averaged, weighted by its number of rows (a
client that sat the round out weighs 0), and all continue from that average. Clients keep
their own optimizer state between rounds. Validation runs the global weights over every
client's validation shard.

Rows per client: ``iid`` is the dataset's hash shards (``worker = client``);
``label_skew`` sorts the training rows by label, cuts them into ``clients *
shards_per_client`` equal chunks and deals each client ``shards_per_client`` of them at
random (McMahan et al., 2017): with 2 a client sees about two digits. All clients get the
same number of rows, so none is padded with repeats. (In this simulation every process
reads the training split and keeps its own chunks; a real client would hold only those.)

Checkpoints are one file per client (its weights and optimizer state mid-round).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stratum.train.strategies import DDP, Loader, WorkerEnv

if TYPE_CHECKING:
    from stratum.train.checkpoint import Checkpoint
    from stratum.train.config import TrainConfig
    from stratum.train.loop import Shards


def label_skew(labels: np.ndarray, clients: int, per_client: int, seed: int
               ) -> list[np.ndarray]:
    """Row indices of each client: label-sorted chunks, ``per_client`` each, dealt at
    random; every client gets the same number of rows (a remainder is left out)."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.permutation(len(labels)), labels))  # by label, shuffled within
    chunks = clients * per_client
    size = len(labels) // chunks
    dealt = rng.permutation(chunks).reshape(clients, per_client)
    return [np.sort(np.concatenate([order[c * size:(c + 1) * size] for c in row]))
            for row in dealt]


class FedAvg(DDP):
    name = "fedavg"

    def __init__(self, env: WorkerEnv, cfg: TrainConfig) -> None:
        super().__init__(env)
        self.fed, self.seed = cfg.fedavg, cfg.seed
        self.rows = 0
        self.selected = True

    def load_data(self, load: Loader) -> Shards:
        mine = load(self.rank, self.world)
        x, y = mine.x_train, mine.y_train
        if self.fed.partition == "label_skew":
            every = load(0, 1)
            idx = label_skew(every.y_train, self.world, self.fed.shards_per_client,
                             self.seed)[self.rank]
            x, y = every.x_train[idx], every.y_train[idx]
        self.rows = len(x)
        # one loop epoch = one round = local_epochs passes over the client's rows
        mine.x_train = np.concatenate([x] * self.fed.local_epochs)
        mine.y_train = np.concatenate([y] * self.fed.local_epochs)
        return mine

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)  # no per-step all-reduce

    def start_epoch(self, epoch: int) -> None:
        chosen = max(1, math.ceil(self.fed.fraction * self.world))
        rng = np.random.default_rng([self.seed, epoch])
        self.selected = self.rank in rng.choice(self.world, chosen, replace=False)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.selected:  # a client that sits the round out keeps the global weights
            optimizer.step()

    def end_epoch(self, model: nn.Module) -> None:
        weight = float(self.rows) if self.selected else 0.0
        tensors = [t for t in (*model.parameters(), *model.buffers())
                   if t.dtype.is_floating_point]
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors]) * weight
        total = torch.tensor([weight], dtype=torch.float64, device=flat.device)
        dist.all_reduce(flat, group=self.group)
        dist.all_reduce(total, group=self.group)
        flat /= total
        offset = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def checkpoint_files(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, bytes] | None:
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buf)
        return {f"client-{self.rank}.pt": buf.getvalue()}

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                checkpoint: Checkpoint) -> None:
        state = torch.load(io.BytesIO(checkpoint.read(f"client-{self.rank}.pt")),
                           map_location=self.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
