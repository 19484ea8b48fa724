"""What a challenger leaves behind: always a run record, a registered version only if it won.

The run (strategy ``online``) holds what was tried and how it was judged: the parent
version, the trigger and feedback range in its config, both models' scores as metrics, and
the gate's decision in its summary. A rejected challenger ends there, so the registry holds
only versions something may serve. ``online.register_rejected`` registers every
challenger as a version (alias ``candidate``), as the learner did before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stratum.online.gate import Decision
from stratum.store import ModelSpec, Store, register_model


@dataclass(frozen=True)
class Challenger:
    """A fine-tuned model as the learner hands it over, with where it came from."""

    name: str
    spec: ModelSpec  # the champion's spec: the challenger's architecture and lineage base
    parent_version: int
    weights: dict[str, Any]  # register_model's weights= / weights_blob=
    preprocessing: Any
    dataset_version_id: int | None
    online: dict[str, Any]  # trigger, feedback rows and range, window size


@dataclass(frozen=True)
class Kept:
    run_id: str
    version: int | None  # None: rejected and not registered


def keep(store: Store, c: Challenger, decision: Decision, *,
         register_rejected: bool = False) -> Kept:
    """Record the challenger as a run; register it when it won (or when asked to)."""
    meta = store.meta
    metric = "accuracy" if c.spec.task == "classification" else "r2"
    run = meta.start_run(c.name, strategy="online", config={
        "parent_version": c.parent_version, **c.online},
        dataset_version_id=c.dataset_version_id)
    meta.log_metrics(run.id, {
        f"holdout_{metric}": decision.challenger_holdout,
        f"recent_{metric}": decision.challenger_recent,
        f"champion_holdout_{metric}": decision.champion_holdout,
        f"champion_recent_{metric}": decision.champion_recent}, step=0)
    version = None
    try:
        if decision.promote or register_rejected:
            version = _register(store, c, decision, metric, run.id)
    except Exception as exc:
        meta.finish_run(run.id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    meta.finish_run(run.id, "completed", summary={
        "outcome": "promoted" if decision.promote else "rejected", "version": version,
        "decision": decision.to_dict()})
    return Kept(run.id, version)


def _register(store: Store, c: Challenger, decision: Decision, metric: str,
              run_id: str) -> int:
    spec = c.spec.model_copy(update={
        "metrics": {metric: decision.challenger_holdout,
                    f"recent_{metric}": decision.challenger_recent},
        "lineage": c.spec.lineage.model_copy(update={
            "parent_version": c.parent_version, "run_id": run_id,
            "extra": {"online": c.online}}),
    })
    parent = store.meta.model_version(c.name, c.parent_version)
    mv = register_model(store.meta, store.artifacts, c.name, spec, **c.weights,
                        preprocessing=c.preprocessing, run_id=run_id, parent_id=parent.id,
                        dataset_version_id=c.dataset_version_id, aliases=("candidate",))
    return mv.version
