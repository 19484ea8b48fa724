"""``finetune``: a few more epochs of THE training loop on a network someone else holds.

Compression passes (``stratum.compress``) fine-tune a pruned network and train a distilled
student with the parent's own loop, optimizer and schedule. They sit beside training in
the layer picture and may not import it, so the caller that sees both (the CLI, or a
user's script) hands this function to ``stratum.compress.compress(..., finetune=...)``.

The network is trained in place, in this process (strategy ``single``), on the parent's
dataset, with no checkpoints and no run record: the pass registers the result.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stratum.store import Store
from stratum.train.config import parse_config
from stratum.train.loop import Job, Progress, train
from stratum.train.strategies import Single, WorkerEnv
from stratum.train.worker import load_shards

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def finetune(store: Store, net: torch.nn.Module, *, dataset: str, config: dict[str, Any],
             epochs: int, loss: LossFn | None = None, targets: np.ndarray | None = None,
             progress: Callable[[Progress], None] | None = None) -> torch.nn.Module:
    """Train ``net`` for ``epochs`` on ``dataset`` (a resolved ``name@hash``) with the
    training config ``config`` (the parent run's); ``targets`` replace the training labels
    (one row per training sample, e.g. a teacher's logits) and ``loss`` reads them."""
    cfg = parse_config({**config, "dataset": dataset, "epochs": epochs, "workers": 1,
                        "strategy": "single", "init_from": None, "early_stopping": None})
    shards = load_shards(store, dataset)
    if targets is not None:
        if len(targets) != len(shards.y_train):
            raise ValueError(f"{len(targets)} targets for {len(shards.y_train)} training rows")
        shards.y_train = targets
    job = Job(config=cfg, run_id=f"compress-{uuid.uuid4().hex[:12]}", dataset=dataset)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        train(job, Single(WorkerEnv()), shards, None, report=progress, network=net,
              objective=loss)
    finally:
        torch.set_num_threads(threads)
    return net.eval()


__all__ = ["finetune"]
