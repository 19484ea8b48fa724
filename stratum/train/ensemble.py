"""``ensemble``: K members trained in parallel processes, registered as ONE version.

A member is the run's config with its own ``model``, ``seed`` (default: the run's seed plus
its index), ``optimizer``, ``epochs`` or ``batch_size`` (``member_config``). The run's
work is a list of units (``units``): each member, and for stacking each member's fold
models too (``stacking.py``). The launcher starts ``workers`` processes; process ``r``
takes units ``r, r + workers, ...`` one after the other: a torch model with the one
training loop (strategy ``single``, its own checkpoints), a scikit-learn one with ``fit``.
A voting member learns from the training split; a stacking member from the training and
validation splits together, and a fold model from all of those rows but its fold, whose
outputs it publishes. Each finished member is published under ``runs/{run}/members/{i}/``
(weights first, then ``result.json``); after a restart a process skips the units already
there and a torch model resumes from its last checkpoint.

``EnsemblePlan`` is the parent's side: it checks every member (and the meta-learner)
builds before anything starts, and after the launch reads the members back through their
frameworks' predictors (the code a replica runs), scores each on the test split and on
the validation split (voting) or out of fold (stacking), fits the stacking meta-learner on
the members' out-of-fold outputs, combines, and packs the one weights file
(``stratum.models.ensemble``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from stratum.errors import ConfigError
from stratum.models import estimators as skl
from stratum.models import num_outputs, resolve_framework
from stratum.models.ensemble import (
    WEIGHTS_FILE,
    Member,
    combine,
    member_model,
    pack,
    stack_features,
)
from stratum.models.frameworks import PredictOptions, load_predictor
from stratum.store import LoadedModel, ModelSpec, Store
from stratum.train import stacking as stack
from stratum.train.components import build_network, dry_run
from stratum.train.config import DEFAULT_META, TrainConfig
from stratum.train.loop import Job, Report, Shards, train
from stratum.train.metrics import make_meter
from stratum.train.strategies import Loader, Single, WorkerEnv

OVERRIDES = ("optimizer", "epochs", "batch_size")


def member_config(cfg: TrainConfig, index: int) -> TrainConfig:
    """Member ``index`` of ``cfg.ensemble`` as a one-process training config."""
    assert cfg.ensemble is not None
    m = cfg.ensemble.members[index]
    doc = cfg.model_dump(mode="json")
    doc.update(strategy="single", workers=1, ensemble=None,
               seed=cfg.seed + index if m.seed is None else m.seed)
    if m.model is not None:
        doc["model"] = m.model.model_dump(mode="json")
    for key in OVERRIDES:
        if getattr(m, key) is not None:
            value = getattr(m, key)
            doc[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    return TrainConfig.model_validate(doc)


def member_prefix(run_id: str, index: int) -> str:
    return f"runs/{run_id}/members/{index}"


def units(cfg: TrainConfig) -> list[tuple[int, int | None]]:
    """The work of an ensemble run as (member, fold) pairs; fold None is the member that is
    served. Stacking adds each member's ``folds`` cross-validation models."""
    assert cfg.ensemble is not None
    served: list[tuple[int, int | None]] = [(i, None) for i in range(len(cfg.ensemble.members))]
    if cfg.ensemble.combine != "stacking":
        return served
    return served + [(i, k) for k in range(cfg.ensemble.folds)
                     for i in range(len(cfg.ensemble.members))]


def run_members(job: Job, store: Store, env: WorkerEnv, load: Loader,
                report: Report | None) -> bool:
    """The body of every process of an ensemble run (see the module docstring)."""
    cfg = job.config
    assert cfg.ensemble is not None
    shards = load(0, 1)  # every member learns from every training row
    stacking = cfg.ensemble.combine == "stacking"
    x, y = stack.all_rows(shards.x_train, shards.y_train, shards.x_val, shards.y_val)
    held = stack.folds(y, cfg.ensemble.folds, cfg.seed, shards.task == "classification") \
        if stacking else []
    for i, fold in units(cfg)[env.rank::env.world]:
        base = member_prefix(job.run_id, i)
        done = f"{base}/result.json" if fold is None else stack.fold_path(base, fold)
        if store.artifacts.exists(done):
            continue  # finished before a restart
        mcfg = member_config(cfg, i)
        framework = resolve_framework(mcfg.model.name, mcfg.model.framework)
        if fold is None:  # stacking refits on all rows (its validation rows are in them)
            rows = replace(shards, x_train=x, y_train=y) if stacking else shards
            blob, summary = _fit_member(job, store, env, mcfg, framework, rows,
                                        f"{job.run_id}/members/{i}", report)
            store.artifacts.put_bytes(f"{base}/{_weights_name(framework)}", blob)
            summary["framework"] = framework
            store.artifacts.put_bytes(done, json.dumps(summary).encode())
            continue
        rest = np.setdiff1d(np.arange(len(y)), held[fold])
        rows = replace(shards, x_train=x[rest], y_train=y[rest], x_val=x[held[fold]],
                       y_val=y[held[fold]])
        blob, _ = _fit_member(job, store, env, mcfg, framework, rows,
                              f"{job.run_id}/members/{i}/folds/{fold}", report)
        member = Member(framework, mcfg.model.name, mcfg.model.params, blob)
        frame = _frame(cfg.model_name, shards.task, shards.input_shape, shards.classes)
        outputs = load_predictor(member_model(frame, i, member), PredictOptions()).predict(
            x[held[fold]])
        store.artifacts.put_bytes(done, stack.fold_bytes(held[fold], outputs))
    return True


def _weights_name(framework: str) -> str:
    return skl.WEIGHTS_FILE if framework == "sklearn" else "weights.safetensors"


def _fit_member(job: Job, store: Store, env: WorkerEnv, mcfg: TrainConfig, framework: str,
                rows: Shards, run_id: str, report: Report | None
                ) -> tuple[bytes, dict[str, Any]]:
    """Train one member (or one of its fold models) on ``rows``: its weights file's bytes
    and its figures. A torch one checkpoints as ``run_id`` and resumes from there."""
    if framework == "sklearn":
        est = skl.build_estimator(mcfg.model.name, rows.task, mcfg.model.params, mcfg.seed)
        skl.fit_estimator(est, rows.x_train, rows.y_train)
        return skl.dumps(est), {"samples": len(rows.x_train)}
    member_job = Job(config=mcfg, run_id=run_id, dataset=job.dataset, attempt=job.attempt)
    result = train(member_job, Single(env), rows, store.artifacts, report=report)
    return st_save(result.state_dict), result.summary()


def _frame(name: str, task: str, input_shape: list[int], classes: list[Any] | None
           ) -> LoadedModel:
    """An ensemble version's outline, from which ``member_model`` makes each member's."""
    spec = ModelSpec(framework="ensemble", architecture="ensemble", task=task,
                     input_shape=list(input_shape), classes=classes)
    return LoadedModel(name=name, version=0, spec=spec, weights_blob=b"")


@dataclass
class Combined:
    blob: bytes
    test: dict[str, float]
    summary: dict[str, Any]
    spec: dict[str, Any]  # what the version's spec says instead of a single model's


class EnsemblePlan:
    """The parent's side of an ensemble run (see the module docstring)."""

    weights_file = WEIGHTS_FILE

    def __init__(self, cfg: TrainConfig, ds: Any) -> None:
        assert cfg.ensemble is not None
        self.cfg, self.ds, self.how = cfg, ds, cfg.ensemble.combine
        self.classify = ds.task == "classification"
        self.outputs = num_outputs(ds.task, ds.classes)
        if self.how == "hard" and not self.classify:
            raise ConfigError("hard voting needs a classification dataset",
                              hint="use combine: soft (the mean) or stacking")
        self.members = [member_config(cfg, i) for i in range(len(cfg.ensemble.members))]
        self.frameworks = [self._check(i, m) for i, m in enumerate(self.members)]
        name, self.meta_params = cfg.ensemble.meta.name, cfg.ensemble.meta.params
        if not self.classify and name == DEFAULT_META:
            name = "sklearn_linear"  # the default meta-learner, for a regressor
        self.meta_name = name
        if self.how == "stacking":
            if cfg.early_stopping is not None:
                raise ConfigError(
                    "early_stopping cannot be used with combine: stacking: the members are "
                    "refit on the training and validation rows together, so no held-out "
                    "rows are left to stop on", hint="remove early_stopping: or use soft")
            try:  # a meta-learner that cannot be built fails before training
                self._meta()
            except ConfigError as exc:
                raise ConfigError(f"the stacking meta-learner cannot be built: {exc.message}",
                                  hint=exc.hint) from exc

    def _check(self, index: int, m: TrainConfig) -> str:
        """A member that cannot be built fails the run before anything starts."""
        try:
            framework = resolve_framework(m.model.name, m.model.framework)
            if framework == "sklearn":
                skl.build_estimator(m.model.name, self.ds.task, m.model.params, m.seed)
            else:
                x0, _ = self.ds.load("train")
                net = build_network(m, self.ds.input_shape, self.outputs)
                dry_run(net, x0, self.outputs, m.model.name)
        except ConfigError as exc:
            raise ConfigError(f"ensemble member {index} ({m.model.name}) cannot be built: "
                              f"{exc.message}", hint=exc.hint) from exc
        return framework

    def _member(self, store: Store, run_id: str, index: int) -> tuple[Member, dict[str, Any]]:
        m, framework = self.members[index], self.frameworks[index]
        base = member_prefix(run_id, index)
        summary = json.loads(store.artifacts.get_bytes(f"{base}/result.json"))
        member = Member(framework, m.model.name, m.model.params,
                        store.artifacts.get_bytes(f"{base}/{_weights_name(framework)}"))
        return member, summary

    def _score(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        meter = make_meter(self.ds.task, self.outputs)
        meter.update(torch.from_numpy(out), torch.from_numpy(y))
        return meter.compute()

    def finish(self, store: Store, run_id: str) -> Combined:
        """Read the members back, score them, fit the meta-learner, combine and pack."""
        ds = self.ds
        xv, yv = ds.load("val")
        xt, yt = ds.load("test")
        frame = _frame(self.cfg.model_name, ds.task, list(ds.input_shape), ds.classes)
        members, rows, val_out, test_out = [], [], [], []
        for i in range(len(self.members)):
            member, summary = self._member(store, run_id, i)
            predictor = load_predictor(member_model(frame, i, member), PredictOptions())
            val_out.append(predictor.predict(xv))
            test_out.append(predictor.predict(xt))
            members.append(member)
            rows.append({"index": i, "model": member.architecture, "framework": member.framework,
                         "seed": self.members[i].seed, "test": self._score(test_out[-1], yt),
                         "global_step": summary.get("global_step"),
                         "samples_per_s": summary.get("samples_per_s")})
        if self.how != "stacking":  # voting: the validation split is held out from all
            val_ens = combine(self.how, val_out, None, self.classify, self.outputs)
            test_ens = combine(self.how, test_out, None, self.classify, self.outputs)
            for row, out, test_member in zip(rows, val_out, test_out, strict=True):
                row["val"] = self._score(out, yv)
                self._paired(row, "test", test_ens, test_member, yt)
            return self._combined(members, None, rows, {"val": self._score(val_ens, yv),
                                                        "test": self._score(test_ens, yt),
                                                        "picked": self._pick(rows, "val")})
        # stacking: the members were refit on train + val, so "val" would be in-sample; each
        # member and the stack are scored out of fold over those rows instead ("cv")
        assert self.cfg.ensemble is not None
        y_all = np.concatenate([ds.load("train")[1], yv])  # all_rows' order: train, val
        k = self.cfg.ensemble.folds
        oof = [stack.out_of_fold(store.artifacts, member_prefix(run_id, i), k, len(y_all))
               for i in range(len(self.members))]
        features = stack_features(oof, self.classify)
        meta = skl.fit_estimator(self._meta(), features, y_all)
        held = stack.folds(y_all, k, self.cfg.seed, self.classify)
        cv_ens = stack.cross_validated(self._meta(), features, y_all, held, self.classify,
                                       self.outputs)
        test_ens = combine("stacking", test_out, meta, self.classify, self.outputs)
        for row, out, test_member in zip(rows, oof, test_out, strict=True):
            row["cv"] = self._score(out, y_all)
            self._paired(row, "cv", cv_ens, out, y_all)
            self._paired(row, "test", test_ens, test_member, yt)
        return self._combined(members, meta, rows, {
            "cv": self._score(cv_ens, y_all), "test": self._score(test_ens, yt), "folds": k,
            "rows": len(y_all), "picked": self._pick(rows, "cv")})

    def _pick(self, rows: list[dict[str, Any]], held: str) -> dict[str, Any]:
        """The member one would ship instead of the ensemble: the best on the rows held out
        from training (``val``, or ``cv`` out of fold), never on the test split. Picking on
        the test rows would hand the member the best of several measurements of the same
        few rows, a bias no ensemble of similar members can make up. Every member
        tied for best is named; the ensemble is compared with each on the test split."""
        key, sign = ("accuracy", 1.0) if self.classify else ("mse", -1.0)
        best = max(sign * r[held][key] for r in rows)
        return {"on": held, "metric": key,
                "members": [r["index"] for r in rows if sign * r[held][key] == best]}

    def _paired(self, row: dict[str, Any], split: str, ensemble: np.ndarray,
                member: np.ndarray, y: np.ndarray) -> None:
        """The rows only the ensemble classifies right and those only the member does: what
        a paired (McNemar) comparison of the two reads; the rest they share."""
        if self.classify:
            e, m = ensemble.argmax(1) == y, member.argmax(1) == y
            row.setdefault("paired", {})[split] = {"only_ensemble": int((e & ~m).sum()),
                                                   "only_member": int((m & ~e).sum())}

    def _meta(self) -> Any:
        """A fresh, unfitted meta-learner."""
        return skl.build_estimator(self.meta_name, self.ds.task, self.meta_params,
                                   self.cfg.seed)

    def _combined(self, members: list[Member], meta: Any | None, rows: list[dict[str, Any]],
                  scores: dict[str, Any]) -> Combined:
        params: dict[str, Any] = {"combine": self.how, "members": [m.doc() for m in members]}
        if meta is not None:
            params["meta"] = self.meta_name
        return Combined(blob=pack(members, None if meta is None else skl.dumps(meta)),
                        test=scores["test"],
                        summary={"members": rows, "ensemble": scores, "combine": self.how},
                        spec={"framework": "ensemble", "architecture": "ensemble",
                              "params": params})
