"""``stratum tune CONFIG --space SPACE.yaml --trials N``: hyper-parameter search (Optuna);
``stratum tune show [SEARCH]``: the searches, or one search's trials."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer
import yaml
from rich.table import Table

from stratum.cli.context import console, get_ctx, print_json
from stratum.errors import ConfigError
from stratum.train.search_space import load_space


def _trial_row(t: Any) -> dict[str, Any]:
    from stratum.train import search as hpo

    steps = sorted(t.intermediate_values)
    return {"trial": t.number, "state": t.state.name, "value": t.value,
            "epochs": steps[-1] if steps else None, "params": hpo.decoded(t),
            "run_id": t.user_attrs.get("run_id")}


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _show(ctx: typer.Context, search_id: str | None, as_json: bool) -> None:
    from stratum.train import search as hpo

    settings = get_ctx(ctx).settings
    if search_id is None:
        rows = []
        for path in sorted(hpo.searches_dir(settings).glob("*.journal")):
            study = hpo.open_study(settings, path.stem)
            done = [t for t in study.trials if t.value is not None and t.state.name == "COMPLETE"]
            rows.append({"search": path.stem, "metric": study.user_attrs.get("metric"),
                         "trials": len(study.trials),
                         "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
                         "best": study.best_value if done else None})
        if as_json:
            print_json(rows)
            return
        table = Table("search", "metric", "trials", "pruned", "best")
        for r in rows:
            table.add_row(r["search"], str(r["metric"]), str(r["trials"]), str(r["pruned"]),
                          "-" if r["best"] is None else f"{r['best']:.4f}")
        console.print(table if rows else "no searches yet: stratum tune CONFIG --space ...")
        return
    study = hpo.open_study(settings, search_id)
    trials = [_trial_row(t) for t in study.trials]
    if as_json:
        print_json({"search": search_id, "metric": study.user_attrs.get("metric"),
                    "trials": trials})
        return
    table = Table("trial", "state", study.user_attrs.get("metric", "value"), "epochs",
                  "params", "run", title=search_id)
    for r in trials:
        table.add_row(str(r["trial"]), r["state"],
                      "-" if r["value"] is None else f"{r['value']:.4f}",
                      str(r["epochs"] or "-"),
                      ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}"
                                for k, v in r["params"].items()),
                      (r["run_id"] or "-")[:8])
    console.print(table)


def tune(
    ctx: typer.Context,
    config: str = typer.Argument(..., help="Training config YAML, or `show`."),
    search_id: str | None = typer.Argument(None, help="With `show`: the search to list."),
    space: Path | None = typer.Option(None, "--space", help="Search space YAML."),
    trials: int = typer.Option(8, "--trials", "-n", help="Trials to run."),
    parallel: int = typer.Option(1, "--parallel", "-p", help="Trials at a time (processes)."),
    backend: Literal["local", "ray"] | None = typer.Option(
        None, "--backend",
        help="Where each trial trains: local processes, or Ray Train on the cluster at "
             "cluster.address (default: the cluster.backend setting)."),
    pruner: Literal["median", "halving"] = typer.Option(
        "median", "--pruner", help="median, or halving (successive halving)."),
    metric: str | None = typer.Option(
        None, "--metric", help="Validation metric to optimise (default val_loss)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Search hyper-parameters of CONFIG over SPACE with Optuna (TPE, pruning on the
    per-epoch validation metric); each trial is a run, the best is registered (alias
    `candidate`) with the search in its lineage. `stratum tune show [SEARCH]` lists."""
    if config == "show":
        _show(ctx, search_id, as_json)
        return
    # The search brings torch and the trainer: imported when one runs, not for --help.
    from stratum.train import search as hpo

    if space is None:
        raise ConfigError("give the search space: --space SPACE.yaml")
    params = load_space(space)
    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    c = get_ctx(ctx)
    settings = c.settings
    if backend is not None:
        settings = settings.model_copy(update={
            "cluster": settings.cluster.model_copy(update={"backend": backend})})

    def on_trial(t: Any) -> None:
        if not as_json:
            value = "-" if t.value is None else f"{t.value:.4f}"
            console.print(f"trial {t.number}: {t.state.name.lower()} {value} "
                          f"{hpo.decoded(t)}", highlight=False)

    result = hpo.search(doc, params, settings, c.store, trials=trials, parallel=parallel,
                        pruner=pruner, metric=metric, on_trial=on_trial)
    mv = result.version
    out = {"search": result.search_id, "name": mv.name, "version": mv.version,
           "aliases": ["candidate"], "metrics": mv.metrics, "best": result.best,
           "states": result.states}
    if as_json:
        print_json(out)
        return
    console.print(f"search [bold]{result.search_id}[/]: {result.states}; best trial "
                  f"{result.best['trial']} ({result.best['value']:.4f}) registered as "
                  f"[bold]{mv.name}[/] v{mv.version} (candidate): "
                  + ", ".join(f"{k}={v:.4f}" for k, v in mv.metrics.items()))


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
