"""``stratum compress NAME@REF [passes]``: compressed child versions, measured and gated.

Passes run in a fixed order when several are given: distill, prune, export, quantize
(so ``--prune 0.8 --quantize int8`` prunes then quantizes). Exit status: 0 done, 1 an
error (nothing registered), 3 the gate refused the last child (registered, no alias).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from stratum.cli.context import console, get_ctx, print_json
from stratum.errors import ConfigError

if TYPE_CHECKING:
    from stratum.compress import CompressResult
    from stratum.compress.passes import Pass


def _passes(prune: float | None, structured: bool, epochs: int | None, finetune_lr: float,
            quantize: str | None, static: bool, calibration: int, distill: str | None,
            student_params: str | None, temperature: float, alpha: float,
            export: str | None) -> list[Pass]:
    # The passes build torch networks: imported when compressing, not for every command.
    from stratum.compress import Distill, Export, Prune, Quantize

    out: list[Pass] = []
    if distill is not None:
        try:
            params = json.loads(student_params) if student_params else {}
        except ValueError as exc:
            raise ConfigError(f"--student-params is not JSON: {exc}") from exc
        try:
            width = float(distill)
        except ValueError:
            out.append(Distill(student=distill, student_params=params, epochs=epochs,
                               temperature=temperature, alpha=alpha))
        else:
            out.append(Distill(width=width, epochs=epochs, temperature=temperature,
                               alpha=alpha))
    elif student_params:
        raise ConfigError("--student-params goes with --distill STUDENT")
    if structured and prune is None:
        raise ConfigError("--structured goes with --prune S")
    if prune is not None:
        out.append(Prune(prune, structured=structured,
                         finetune_epochs=1 if epochs is None else epochs,
                         finetune_lr=finetune_lr))
    if export is not None:
        if export != "onnx":
            raise ConfigError(f"--export {export}: only onnx")
        out.append(Export())
    if quantize is not None:
        if quantize != "int8":
            raise ConfigError(f"--quantize {quantize}: only int8")
        out.append(Quantize("static" if static else "dynamic", calibration))
    elif static:
        raise ConfigError("--static goes with --quantize int8")
    return out


def compress_cmd(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
    prune: float | None = typer.Option(None, "--prune", help="Sparsity S in (0, 1)."),
    structured: bool = typer.Option(False, "--structured",
                                    help="Remove whole neurons/channels (a narrower net)."),
    finetune_epochs: int | None = typer.Option(
        None, "--finetune-epochs", help="Epochs of the parent's loop after pruning (1), or "
        "for the student (the parent's)."),
    finetune_lr: float = typer.Option(
        0.1, "--finetune-lr", help="Fine-tuning after pruning runs at this fraction of the "
        "parent's peak learning rate, constant (no warm-up, no schedule)."),
    quantize: str | None = typer.Option(None, "--quantize", help="int8"),
    static: bool = typer.Option(False, "--static", help="Calibrate activations (static)."),
    calibration: int = typer.Option(200, "--calibration", help="Calibration samples."),
    distill: str | None = typer.Option(
        None, "--distill", help="Student: a width factor of the parent (0.5) or a zoo name."),
    student_params: str | None = typer.Option(None, "--student-params",
                                              help="The named student's params, JSON."),
    temperature: float = typer.Option(4.0, "--temperature", help="Distillation T."),
    alpha: float = typer.Option(0.7, "--alpha", help="Weight of the soft labels."),
    export: str | None = typer.Option(None, "--export", help="onnx"),
    max_accuracy_drop: float | None = typer.Option(
        None, "--max-accuracy-drop", help="Points the last child may lose, else no alias "
        "and exit 3."),
    alias: str | None = typer.Option(None, "--alias", help="Alias for the last child."),
    timing_s: float = typer.Option(2.0, "--timing-s", help="Seconds of timing a version."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Compress a version through passes; each registers a child version with lineage
    and a report (accuracy, bytes, latency, throughput against the parent)."""
    from stratum.compress import EXIT_REFUSED, compress
    from stratum.train.tune import finetune

    c = get_ctx(ctx)
    passes = _passes(prune, structured, finetune_epochs, finetune_lr, quantize, static,
                     calibration, distill, student_params, temperature, alpha, export)
    kw: dict[str, Any] = {"max_accuracy_drop": max_accuracy_drop, "alias": alias,
                          "finetune": finetune, "timing_s": timing_s,
                          "cache_dir": c.settings.home / "cache"}
    if as_json:
        result = compress(c.store, ref, passes, **kw)
        print_json({**result.to_dict(), "rows": result.rows()})
    else:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("{task.fields[loss]}"))
        with Progress(*columns, console=console, transient=True) as bar:
            stage = bar.add_task("loading", total=None, loss="")
            steps = bar.add_task("", total=None, loss="", visible=False)

            def report(event: str, info: dict[str, Any]) -> None:
                if event == "stage":
                    console.print(f"· {info['text']}")
                    bar.update(stage, description=info["text"])
                    bar.update(steps, visible=False)
                else:
                    loss = "" if info.get("loss") is None else f"loss {info['loss']:.4f}"
                    bar.update(steps, visible=True, description="training",
                               total=info["total"] or None, completed=info["step"], loss=loss)

            result = compress(c.store, ref, passes, report=report, **kw)
        print_result(result)
    if not result.passed:
        raise typer.Exit(EXIT_REFUSED)


def print_result(result: CompressResult) -> None:
    rows = result.rows()
    runtimes = ", ".join(sorted({r["runtime"] for r in rows}))
    t = Table(title=f"{result.name}: same test split, runtime {runtimes}; "
                    "ratios to the parent")
    for col in ("version", "made by", rows[0]["metric"], "Δ pts", "bytes", "p50/p99 ms @1",
                "samples/s @32"):
        t.add_column(col, justify="left" if col == "made by" else "right")
    for r in rows:
        parent = r["made_by"] == "parent"
        t.add_row(f"v{r['version']}", r["made_by"], f"{r['score']:.4f}",
                  "-" if parent else f"{-r['drop_points']:+.2f}",
                  f"{r['bytes']:,}" + ("" if parent else f" (÷{r['size_ratio']:.1f})"),
                  f"{r['p50_ms']:.3f}/{r['p99_ms']:.2f}"
                  + ("" if parent else f" ({r['p50_speedup']:.2f}x)"),
                  f"{r['samples_per_s']:,.0f}"
                  + ("" if parent else f" ({r['throughput_ratio']:.2f}x)"))
    console.print(t)
    for s in result.steps:
        checks = ", ".join(f"{k}={v}" for k, v in s.checks.items())
        console.print(f"v{s.figures.version} ← v{s.parent.version}: {s.made_by} "
                      f"{s.params}  {checks}  report: {s.report_path}", highlight=False)
    gate = result.final.gate
    console.print(("[green]" if gate.passed else "[bold red]") + gate.describe() + "[/]")
    if result.alias:
        moved = "moved to" if result.alias_moved else "NOT moved to"
        console.print(f"alias {result.alias} {moved} {result.name} v{result.final.figures.version}")


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)
