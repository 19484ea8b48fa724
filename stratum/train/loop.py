"""THE training loop. Every strategy runs this one function; read it top to bottom.

``train(job, strategy, data, store)`` trains one worker's share: it builds the network,
resumes from the newest good checkpoint of ``job.run_id`` if there is one, runs the epochs,
evaluates on the validation split after each, and returns the final weights. What differs
between strategies is behind ``Strategy`` (see ``strategies.py``): how the model is
wrapped, how the optimizer steps, how workers reduce numbers. The hot path does no
database writes and no device syncs beyond what the strategy needs; metric rows and
progress reports are throttled by time.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load as st_load

from stratum.data.augment import Augment
from stratum.errors import TrainingError
from stratum.models import num_outputs
from stratum.store.artifacts import ArtifactStore
from stratum.store.sparse import densify, is_sparse
from stratum.train import checkpoint as ckpt
from stratum.train.components import (
    build_loss,
    build_network,
    build_optimizer,
    build_schedule,
)
from stratum.train.config import TrainConfig
from stratum.train.metrics import MetricStream, make_meter, memory_figures, metric_names
from stratum.train.strategies import Strategy


class Job(BaseModel):
    """What every worker of one run is told; serialised to JSON for worker processes."""

    config: TrainConfig
    run_id: str
    dataset: str  # fully resolved ref: name@<full hash>
    attempt: int = 0
    progress_file: str | None = None
    init_weights: str | None = None  # artifact path of safetensors to start from


class Progress(BaseModel):
    """A live report from rank 0: the CLI's progress bar and the launcher read these."""

    attempt: int = 0
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    samples_per_s: float | None = None
    phase: str = "train"  # train | val | done | restarting
    resumed_from: int | None = None
    metrics: dict[str, float] = {}


@dataclass
class Shards:
    """This worker's data: preprocessed arrays of its own shards, plus what the task is."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    task: str
    classes: list[Any] | None
    input_shape: list[int]


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None
    stopped_early: bool = False
    checkpoint_seconds: list[float] = field(default_factory=list)  # loop blocked per save
    checkpoint_write_seconds: list[float] = field(default_factory=list)  # background write
    samples_per_s: float = 0.0
    memory: list[dict[str, int]] = field(default_factory=list)  # per rank, see memory_figures

    def summary(self) -> dict[str, Any]:
        """The run's figures, without the weights: what a run record and result.json hold."""
        return {"global_step": self.global_step, "history": self.history,
                "resumed_from": self.resumed_from, "stopped_early": self.stopped_early,
                "checkpoint_seconds": self.checkpoint_seconds,
                "checkpoint_write_seconds": self.checkpoint_write_seconds,
                "samples_per_s": self.samples_per_s, "memory": self.memory}


Report = Callable[[Progress], None]


def train(job: Job, strategy: Strategy, data: Shards, artifacts: ArtifactStore | None,
          *, metrics_sink: Any | None = None, report: Report | None = None,
          network: torch.nn.Module | None = None,
          objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
          ) -> TrainResult:
    """Train this worker's share of ``job``; see the module docstring. ``network`` is the
    freshly built network when the caller already built it (seeded with ``cfg.seed``);
    ``objective`` replaces the config's loss (distillation: soft targets in ``data.y_train``)."""
    cfg = job.config
    main = strategy.is_main
    dev = strategy.device

    # -- model, loss, optimizer: identical seed on every rank, so every replica starts equal
    torch.manual_seed(cfg.seed)
    outputs = num_outputs(data.task, data.classes)
    model = strategy.prepare(network if network is not None
                             else build_network(cfg, data.input_shape, outputs))
    loss_fn = objective or build_loss(cfg, data.task)
    optimizer = build_optimizer(cfg, model)
    x, y = _tensor(data.x_train, dev), _tensor(data.y_train, dev)
    # Global batch is the config's; each of W workers takes 1/W of it, so ddp follows the
    # same optimisation path as single. Every worker runs the same number of steps.
    local_batch = max(1, cfg.batch_size // strategy.world)
    steps = strategy.all_reduce_max(math.ceil(len(x) / local_batch))
    schedule = build_schedule(cfg, optimizer, steps)
    names = metric_names(data.task, cfg.metrics)
    autocast = _autocast(cfg, dev)
    check_every = 1 if dev.type == "cpu" else 50  # a NaN check syncs the GPU; not each step
    stream = MetricStream(metrics_sink if main else None, job.run_id, cfg.log_every_s)
    augment = Augment.from_config(cfg.augment, cfg.seed) if cfg.augment else None

    # -- resume: the newest complete checkpoint, if this run has one
    epoch, start_step, global_step, stop = 0, 0, 0, {"best": None, "bad": 0, "stopped": False}
    result = TrainResult(state_dict={}, global_step=0)
    found = ckpt.load_latest(artifacts, job.run_id) if artifacts is not None else None
    if found is not None:
        s = found.state
        if found.files:  # sharded: each rank reads its own part
            strategy.restore(model, optimizer, found)
        else:
            _unwrap(model).load_state_dict(s["model"])
            optimizer.load_state_dict(s["optimizer"])
        schedule.load_state_dict(s["scheduler"])
        ckpt.set_rng_state(s["rng"][min(strategy.rank, len(s["rng"]) - 1)])
        epoch, start_step = int(s["position"]["epoch"]), int(s["position"]["step"])
        global_step, stop = int(s["position"]["global_step"]), dict(s["early_stopping"])
        result.history = list(s.get("history", []))
        result.resumed_from = found.step
    else:
        if job.init_weights and artifacts is not None:  # fine-tuning a registered version
            blob = artifacts.get_bytes(job.init_weights)  # a pruned version's are sparse
            _unwrap(model).load_state_dict(densify(blob) if is_sparse(blob) else st_load(blob))
        torch.manual_seed(cfg.seed + 7919 * strategy.rank)  # dropout differs per rank

    writer = ckpt.CheckpointWriter(artifacts, job.run_id) if main and artifacts else None

    def save(position_epoch: int, position_step: int) -> None:
        rngs = strategy.gather(ckpt.rng_state())  # a collective: every rank calls it
        files = strategy.checkpoint_files(model, optimizer) if artifacts is not None else None
        state = {"scheduler": schedule.state_dict(), "rng": rngs, "early_stopping": dict(stop),
                 "position": {"epoch": position_epoch, "step": position_step,
                              "global_step": global_step},
                 "history": list(result.history)}
        if files is None:  # whole: the main rank writes weights and optimizer state
            if writer is not None:
                writer.submit(global_step, {**state, "model": strategy.state_dict(model),
                                            "optimizer": optimizer.state_dict()})
            return
        assert artifacts is not None
        # sharded: every rank publishes its part; the main rank's manifest names them all
        mine = ckpt.publish_files(artifacts, job.run_id, global_step, files)
        named = {k: v for part in strategy.gather(mine) for k, v in part.items()}
        if writer is not None:
            writer.submit(global_step, state, files=named)

    _emit(report, main, Progress(attempt=job.attempt, epoch=epoch, epochs=cfg.epochs,
                                 step=global_step, total_steps=steps * cfg.epochs,
                                 resumed_from=result.resumed_from))
    last_report, first = time.monotonic(), True  # report the very first step: "training"
    while epoch < cfg.epochs and not stop["stopped"]:
        # -- one epoch: a permutation fixed by (seed, epoch, rank) is the data position
        model.train()
        strategy.start_epoch(epoch)
        order = _epoch_order(len(x), steps * local_batch, cfg.seed, epoch, strategy)
        window_loss = torch.zeros((), device=dev)
        window_steps, window_t0 = 0, time.perf_counter()
        epoch_t0, epoch_samples = time.perf_counter(), 0
        for step_in_epoch in range(start_step, steps):
            idx = order[step_in_epoch * local_batch:(step_in_epoch + 1) * local_batch]
            if len(idx) == 0:
                continue
            xb, yb = x[idx], y[idx]
            if augment is not None:  # a fixed position: a resumed run draws the same
                augment.reseed(epoch, step_in_epoch, strategy.rank)
                xb = augment(xb)
            with autocast:
                out = model(xb)
            loss = loss_fn(out.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            strategy.optimizer_step(optimizer)
            schedule.step()
            global_step += 1
            epoch_samples += len(idx)
            window_loss += loss.detach()
            window_steps += 1

            if global_step % check_every == 0 and not torch.isfinite(window_loss):
                raise TrainingError(
                    f"loss became {float(loss.detach())} at step {global_step} "
                    f"(epoch {epoch + 1}, batch {step_in_epoch + 1} of {steps})",
                    hint="lower optimizer.lr, check the data for extreme values, or use bf16: "
                         "false")
            if global_step % cfg.checkpoint_every == 0 and step_in_epoch + 1 < steps:
                save(epoch, step_in_epoch + 1)  # (the epoch-end save covers the last step)
            now = time.monotonic()
            if main and (stream.due() or (report and (first or now - last_report >= 0.5))):
                elapsed = time.perf_counter() - window_t0
                values = {"loss": float(window_loss) / window_steps,
                          "samples_per_s": window_steps * local_batch * strategy.world
                          / max(elapsed, 1e-9)}
                if stream.due():
                    stream.step(values, step=global_step, epoch=epoch)
                _emit(report, main, Progress(
                    attempt=job.attempt, epoch=epoch, epochs=cfg.epochs, step=global_step,
                    total_steps=steps * cfg.epochs, loss=values["loss"],
                    samples_per_s=values["samples_per_s"], resumed_from=result.resumed_from))
                last_report, first = now, False
                window_loss.zero_()
                window_steps, window_t0 = 0, time.perf_counter()

        # -- end of epoch: strategy hook, validation, early stopping, checkpoint
        strategy.end_epoch(model)
        epoch_s = time.perf_counter() - epoch_t0
        val = evaluate(model, data.x_val, data.y_val, loss_fn, data.task, outputs, strategy,
                       autocast)
        row = {"epoch": float(epoch + 1), "epoch_time_s": epoch_s,
               "samples_per_s": epoch_samples * strategy.world / max(epoch_s, 1e-9),
               **{f"val_{k}": v for k, v in val.items() if k in names or k == "loss"}}
        result.history.append(row)
        stream.epoch(row, step=global_step, epoch=epoch + 1)
        _early_stop(cfg, stop, row)
        epoch, start_step = epoch + 1, 0
        save(epoch, 0)
        _emit(report, main, Progress(
            attempt=job.attempt, epoch=epoch, epochs=cfg.epochs, step=global_step,
            total_steps=steps * cfg.epochs, phase="val", samples_per_s=row["samples_per_s"],
            resumed_from=result.resumed_from, metrics=row))

    if writer is not None:
        writer.wait()
        result.checkpoint_seconds = writer.blocking_s
        result.checkpoint_write_seconds = writer.write_s
    result.state_dict = {k: v.detach().cpu() for k, v in strategy.state_dict(model).items()}
    result.memory = strategy.gather(memory_figures(model, optimizer))
    result.global_step, result.stopped_early = global_step, bool(stop["stopped"])
    measured = [h["samples_per_s"] for h in result.history]
    result.samples_per_s = float(np.median(measured)) if measured else 0.0
    return result


def evaluate(model: torch.nn.Module, x_np: np.ndarray, y_np: np.ndarray, loss_fn: Any,
             task: str, outputs: int, strategy: Strategy,
             autocast: contextlib.AbstractContextManager[Any] | None = None,
             batch: int = 1024) -> dict[str, float]:
    """Loss and metrics over this worker's split, summed across workers by the strategy."""
    dev = strategy.device
    meter = make_meter(task, outputs, dev)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=dev)  # (sum of losses, count)
    model.eval()
    # A sharded model needs every rank in every forward pass: the same number of batches
    # everywhere, empty ones included.
    batches = strategy.all_reduce_max(math.ceil(len(x_np) / batch))
    with torch.no_grad():
        for i in range(0, batches * batch, batch):
            xb, yb = _tensor(x_np[i:i + batch], dev), _tensor(y_np[i:i + batch], dev)
            with autocast or contextlib.nullcontext():
                out = model(xb)
            if len(xb) == 0:
                continue
            out = out.float()
            loss_sum[0] += loss_fn(out, yb).double() * len(xb)
            loss_sum[1] += len(xb)
            meter.update(out, yb)
    model.train()
    totals = strategy.all_reduce_sum(torch.cat([loss_sum, meter.state()]))
    if totals[1] == 0:
        return {}
    return {"loss": float(totals[0] / totals[1]), **meter.compute(totals[2:])}


# -- small helpers the loop reads better without ----------------------------------------

def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)
    assert isinstance(inner, torch.nn.Module)
    return inner


def _autocast(cfg: TrainConfig, dev: torch.device) -> contextlib.AbstractContextManager[Any]:
    on = cfg.bf16
    if on is None:  # automatic only where the hardware has fast bf16
        on = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def _epoch_order(n: int, padded: int, seed: int, epoch: int,
                 strategy: Strategy) -> torch.Tensor:
    """Sample order for one epoch. Under several workers every worker must run the same
    number of steps, so the shorter shards are topped up with random repeats."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + strategy.rank)
    order = torch.randperm(n, generator=g)
    if strategy.world > 1 and padded > n:
        order = torch.cat([order, torch.randint(n, (padded - n,), generator=g)])
    return order.to(strategy.device)


def _early_stop(cfg: TrainConfig, stop: dict[str, Any], row: dict[str, float]) -> None:
    es = cfg.early_stopping
    if es is None or es.metric not in row:
        return
    value = row[es.metric]
    sign = 1.0 if es.metric.endswith(("loss", "mse", "mae")) else -1.0  # lower is better?
    if stop["best"] is None or sign * (stop["best"] - value) > es.min_delta:
        stop["best"], stop["bad"] = value, 0
    else:
        stop["bad"] += 1
        stop["stopped"] = stop["bad"] >= es.patience


def _emit(report: Report | None, main: bool, progress: Progress) -> None:
    if report is not None and main:
        report(progress)

