"""``stratum train CONFIG.yaml``: train, evaluate on the test split, register a version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stratum.cli.context import console, get_ctx, print_json
from stratum.errors import ConfigError
from stratum.train import load_config

if TYPE_CHECKING:
    from stratum.train import Progress as TrainProgress


class _Bar:
    """A rich progress bar fed by the trainer's (or the launcher's) progress reports."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("starting", total=None, loss="-", sps="-")

    def __call__(self, p: TrainProgress) -> None:
        if p.phase == "restarting":
            self.progress.console.print(
                f"[yellow]a worker died at step {p.step}; restarting the group "
                f"(attempt {p.attempt + 1}) from the last checkpoint[/]")
            self.progress.update(self.task, description="restarting")
            return
        fields: dict[str, Any] = {}
        if p.loss is not None:
            fields["loss"] = f"{p.loss:.4f}"
        if p.samples_per_s is not None:
            fields["sps"] = f"{p.samples_per_s:,.0f}"
        desc = f"epoch {min(p.epoch + 1, p.epochs)}/{p.epochs}"
        if p.resumed_from:
            desc += f" (resumed @{p.resumed_from})"
        self.progress.update(self.task, total=p.total_steps or None, completed=p.step,
                             description=desc, **fields)


def train(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="Training config YAML (see examples/)."),
    workers: int | None = typer.Option(None, "--workers", "-w", help="Worker processes."),
    strategy: str | None = typer.Option(
        None, "--strategy",
        help="single | ddp | parameter_server | fsdp | fedavg | ensemble."),
    backend: Literal["local", "ray"] | None = typer.Option(
        None, "--backend",
        help="Where the workers run: local processes, or Ray Train on the cluster at "
             "cluster.address (default: the cluster.backend setting)."),
    gpus_per_worker: float | None = typer.Option(
        None, "--gpus-per-worker", min=0,
        help="GPUs each Ray Train worker asks of its node (--backend ray; default: the "
             "cluster.train_gpus_per_worker setting, 0 = CPUs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the last stopped run."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override epochs."),
    name: str | None = typer.Option(None, "--name", help="Registered model name."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a model from CONFIG, evaluate it on the test split and register it
    (alias `candidate`). A killed worker is restarted from the last checkpoint."""
    from stratum.train import fit  # torch and the strategies: only when training

    c = get_ctx(ctx)
    cfg = load_config(config, workers=workers, strategy=strategy, epochs=epochs, name=name)
    settings = c.settings
    if backend is not None:
        settings = settings.model_copy(update={
            "cluster": settings.cluster.model_copy(update={"backend": backend})})
    if gpus_per_worker is not None:
        if gpus_per_worker > 0 and settings.cluster.backend != "ray":
            raise ConfigError(
                "--gpus-per-worker asks Ray for GPUs; local workers use a GPU when they see one",
                hint="add --backend ray, or leave --gpus-per-worker out")
        settings = settings.model_copy(update={"cluster": settings.cluster.model_copy(
            update={"train_gpus_per_worker": gpus_per_worker})})
    if as_json:
        mv = fit(cfg, settings, resume=resume, store=c.store)
    else:
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s"),
            TimeElapsedColumn(), TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            mv = fit(cfg, settings, progress=_Bar(bar), resume=resume, store=c.store)
    run = c.store.meta.run(mv.run_id) if mv.run_id else None
    summary = {k: v for k, v in (run.summary if run else {}).items() if k != "history"}
    doc = {"name": mv.name, "version": mv.version, "aliases": ["candidate"],
           "metrics": mv.metrics, "run_id": mv.run_id, "summary": summary}
    if as_json:
        print_json(doc)
        return
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in mv.metrics.items())
    console.print(f"registered [bold]{mv.name}[/] v{mv.version} (candidate): {metrics}")
    for row in summary.get("members", []):  # an ensemble: every member beside the whole
        console.print(f"  member {row['index']} {row['model']} (seed {row['seed']}): "
                      + ", ".join(f"{k}={v:.4f}" for k, v in row["test"].items()))
    picked = summary.get("ensemble", {}).get("picked")
    if picked:  # what the ensemble is worth: the member one would ship without it
        console.print(f"  best member on {picked['on']} (not on test): "
                      + ", ".join(str(i) for i in picked["members"]) + "; ensemble "
                      + f"{picked['metric']}={summary['ensemble']['test'][picked['metric']]:.4f}"
                      + " on test")
    for r in summary.get("restarts", []):
        who = "a worker" if r.get("rank") is None else f"rank {r['rank']}"
        again = "" if r.get("recover_s") is None else \
            f", training again after {r['recover_s']:.2f}s"
        console.print(f"  restart: {who} died at step {r['last_step']}, resumed from "
                      f"step {r['resumed_from']}{again}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
