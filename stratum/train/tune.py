"""``finetune``: a few more epochs of THE training loop on a network someone else holds.

Compression passes (``stratum.compress``) fine-tune a pruned network and train a distilled
student with the parent's own loop, optimizer and schedule. They sit beside training in
the layer picture and may not import it, so the caller that sees both (the CLI, or a
user's script) hands this function to ``stratum.compress.compress(..., finetune=...)``.

The network is trained in place, in this process (strategy ``single``), on the parent's
dataset, with no checkpoints and no run record: the pass registers the result.

A network that is already trained (pruning's fine-tuning) is given ``lr_scale``: a
constant learning rate of the parent's peak rate times ``lr_scale``, with no warm-up and
no schedule. Re-running the parent's warm-up and cosine from the top would put a trained
network back at the full rate, which undoes more than one epoch can repair (the mnist
cnn, 80% pruned: -0.6 points with it, against +0.2 with no fine-tuning at all). A student
trained from scratch (distillation) keeps the parent's schedule.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from stratum.store import Store
from stratum.train.config import OptimizerConfig, TrainConfig, parse_config
from stratum.train.loop import Job, Progress, train
from stratum.train.strategies import Single, WorkerEnv
from stratum.train.worker import load_shards

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def tune_config(config: dict[str, Any], dataset: str, epochs: int,
                lr_scale: float | None = None) -> TrainConfig:
    """The parent run's config for ``epochs`` more in this process; with ``lr_scale``, a
    constant rate of the parent's peak rate times ``lr_scale`` (no warm-up, no schedule)."""
    doc = {**config, "dataset": dataset, "epochs": epochs, "workers": 1,
           "strategy": "single", "init_from": None, "early_stopping": None}
    if lr_scale is not None:
        if not 0 < lr_scale <= 1:
            raise ValueError(f"lr_scale must be in (0, 1], got {lr_scale}")
        optimizer = dict(doc.get("optimizer") or {})
        optimizer["lr"] = float(optimizer.get("lr", OptimizerConfig().lr)) * lr_scale
        doc.update(optimizer=optimizer, schedule={"name": "none"})
    return parse_config(doc)


def finetune(store: Store, net: torch.nn.Module, *, dataset: str, config: dict[str, Any],
             epochs: int, loss: LossFn | None = None, targets: np.ndarray | None = None,
             progress: Callable[[Progress], None] | None = None,
             lr_scale: float | None = None) -> torch.nn.Module:
    """Train ``net`` for ``epochs`` on ``dataset`` (a resolved ``name@hash``) with the
    training config ``config`` (the parent run's); ``targets`` replace the training labels
    (one row per training sample, e.g. a teacher's logits) and ``loss`` reads them;
    ``lr_scale``: see ``tune_config``."""
    cfg = tune_config(config, dataset, epochs, lr_scale)
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


__all__ = ["finetune", "tune_config"]
