"""``compress(store, ref, passes)``: run a chain of passes, measure, gate, register.

1. Resolve ``ref`` and check the whole chain against it (framework, sparsity, student
   shape...): bad input fails here, before any work, and registers nothing.
2. Run the passes in order in memory, each on the previous one's output.
3. Measure the parent and every child on the same test split with the same runtime
   (``measure``): score, weights bytes, then one interleaved timing run.
4. Judge the last child against the parent (``gate``), register every child in order
   (each one's parent is the previous version; lineage names the pass and its
   parameters; its report is stored beside its weights), and move the requested alias
   to the last child only if the gate passed. Intermediate children get no alias.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from stratum.compress.gate import judge
from stratum.compress.measure import Figures, figures, predictor, time_both
from stratum.compress.passes import Child, Distill, Finetune, Kind, Pass, Prune, Report, Work
from stratum.compress.quantize import is_quantized
from stratum.compress.report import REPORT_FILE, CompressResult, Step, child_report
from stratum.data import open_dataset
from stratum.errors import ConfigError, NotFoundError
from stratum.security.names import validate_name
from stratum.store import Lineage, LoadedModel, Store, load_model, parse_ref, register_model
from stratum.store import models as m

log = logging.getLogger(__name__)


def compress(store: Store, ref: str, passes: Sequence[Pass], *,
             max_accuracy_drop: float | None = None, alias: str | None = None,
             finetune: Finetune | None = None, report: Report | None = None,
             timing_s: float = 2.0, cache_dir: Path | None = None) -> CompressResult:
    """Compress ``NAME@VERSION`` (or ``@ALIAS``) through ``passes``; see the module doc.

    ``finetune`` is the training loop (``stratum.train.tune.finetune``), needed by pruning
    with fine-tuning and by distillation. ``report(event, info)`` hears progress
    (``stage`` with a ``text``, ``train`` with ``step``/``total``/``loss``). ``timing_s``
    is about how long each version is timed; ``cache_dir`` keeps the ONNX exports a
    torch version is measured with (a replica's: ``settings.home / "cache"``).
    """
    say: Report = report or (lambda event, info: None)
    if not passes:
        raise ConfigError("nothing to do: give at least one pass",
                          hint="--prune S, --quantize int8, --distill STUDENT or --export onnx")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise ConfigError("--max-accuracy-drop is in points and must be >= 0")
    if alias is not None:
        validate_name(alias, "alias")
    name, version = parse_ref(ref)
    mv = store.meta.model_version(name, version)  # NotFoundError names the ref
    root = load_model(store.meta, store.artifacts, name, mv.version)
    _check_chain(root, passes, finetune)

    lineage = root.spec.lineage
    if not lineage.dataset or not lineage.dataset_version:
        raise ConfigError(f"{name} v{mv.version} names no dataset; compression needs the "
                          "parent's dataset for its test split and fine-tuning")
    try:
        dataset = open_dataset(store, f"{lineage.dataset}@{lineage.dataset_version}")
    except NotFoundError as exc:
        raise ConfigError(f"the dataset of {name} v{mv.version} is gone: {exc.message}") \
            from exc
    work = Work(store, dataset, _train_config(store, mv), finetune, say)

    chain: list[tuple[Pass, Child, LoadedModel]] = []
    parent = root
    for i, p in enumerate(passes, 1):
        say("stage", {"text": f"pass {i}/{len(passes)}: {p.name} {_short(p.params())}"})
        child = p.run(work, parent)
        loaded = LoadedModel(name=name, version=0, spec=child.spec, weights_blob=child.blob,
                             preprocessing=root.preprocessing)
        chain.append((p, child, loaded))
        parent = loaded

    say("stage", {"text": f"measuring {len(chain) + 1} versions on "
                          f"{dataset.name}'s test split"})
    x, y = dataset.load("test")
    preds = [predictor(root, cache_dir)] + [predictor(c[2], cache_dir) for c in chain]
    rows = [figures(root, "parent", preds[0], x, y)]
    rows += [figures(c[2], c[0].name, pr, x, y) for c, pr in zip(chain, preds[1:], strict=True)]
    time_both(preds, rows, x, seconds=timing_s * len(preds))

    result = CompressResult(name=name, root=rows[0], alias=alias)
    parent_mv: m.ModelVersion = mv
    parent_fig = rows[0]
    for (p, child, _), fig in zip(chain, rows[1:], strict=True):
        gate = judge(rows[0].score, fig.score, max_accuracy_drop)
        fig.version = store.meta.next_model_version(name)
        step = Step(made_by=p.name, params=p.params(), checks=child.checks, figures=fig,
                    parent=replace(parent_fig), gate=gate)
        say("stage", {"text": f"registering {name} v{fig.version} ({p.name})"})
        parent_mv = _register(store, root, parent_mv, child, step, rows[0])
        fig.version = parent_mv.version
        step.report_path = f"{parent_mv.artifact_path}/{REPORT_FILE}"
        result.steps.append(step)
        parent_fig = fig
    if alias and result.passed:
        store.meta.set_alias(name, alias, parent_mv.version, reason="compress")
        result.alias_moved = True
    return result


def _register(store: Store, root: LoadedModel, parent: m.ModelVersion, child: Child,
              step: Step, root_fig: Figures) -> m.ModelVersion:
    lineage: Lineage = root.spec.lineage.model_copy(update={
        "parent_version": parent.version, "run_id": None,
        "compression": {"pass": step.made_by, "params": step.params, "report": REPORT_FILE,
                        "root": root.version, "checks": step.checks},
    })
    spec = child.spec.model_copy(update={
        "metrics": {step.figures.metric: step.figures.score}, "lineage": lineage})
    doc = child_report(step, root_fig, root.name)
    return register_model(
        store.meta, store.artifacts, root.name, spec, weights_blob=child.blob,
        preprocessing=root.preprocessing, parent_id=parent.id,
        dataset_version_id=parent.dataset_version_id, aliases=(),
        extra_files={REPORT_FILE: json.dumps(doc, indent=2, default=str).encode()})


def _check_chain(root: LoadedModel, passes: Sequence[Pass], finetune: Finetune | None
                 ) -> None:
    """Every pass accepts what the one before makes; a student fits the input; the
    training loop is there for the passes that train."""
    spec = root.spec
    quantized = spec.framework == "onnx" and is_quantized(root.onnx_graph())
    kind = Kind(spec.framework, quantized, spec.architecture)
    for p in passes:
        kind = p.check(kind)
        if isinstance(p, Distill):
            p.build(spec)
        trains = isinstance(p, Distill) or (isinstance(p, Prune) and p.finetune_epochs > 0)
        if trains and finetune is None:
            raise ConfigError(f"{p.name} trains with the parent's training loop; none given",
                              hint="pass finetune=stratum.train.tune.finetune")


def _train_config(store: Store, mv: m.ModelVersion) -> dict[str, Any]:
    """The training config of the run that made ``mv`` or its nearest ancestor."""
    seen: m.ModelVersion | None = mv
    while seen is not None:
        if seen.run_id:
            try:
                return dict(store.meta.run(seen.run_id).config)
            except NotFoundError:
                break
        seen = store.meta.model_version_by_id(seen.parent_id) if seen.parent_id else None
    spec = mv.spec
    return {"model": {"name": spec["architecture"], "params": spec.get("params", {})}}


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if v not in (None, {}, []))


__all__ = ["compress"]
