"""``ensemble``: K members trained in parallel processes, registered as ONE version.

A member is the run's config with its own ``model``, ``seed`` (default: the run's seed plus
its index), ``optimizer``, ``epochs`` or ``batch_size`` (``member_config``). The launcher
starts ``workers`` processes; process ``r`` trains members ``r, r + workers, ...`` one
after the other on the whole training split: a torch member with the one training loop
(strategy ``single``, its own checkpoints), a scikit-learn member with ``fit``. Each
finished member is published under ``runs/{run}/members/{i}/`` (weights first, then
``result.json``); after a restart a process skips the members already there and a torch
member resumes from its last checkpoint.

``EnsemblePlan`` is the parent's side: it checks every member builds before anything
starts, and after the launch reads the members back through their frameworks' predictors
(the code a replica runs), scores each on the validation and test splits, fits the
stacking meta-learner on the members' validation predictions, combines, and packs the one
weights file (``stratum.models.ensemble``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
from stratum.train.components import build_network, dry_run
from stratum.train.config import TrainConfig
from stratum.train.loop import Job, Report, train
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


def run_members(job: Job, store: Store, env: WorkerEnv, load: Loader,
                report: Report | None) -> bool:
    """The body of every process of an ensemble run (see the module docstring)."""
    cfg = job.config
    assert cfg.ensemble is not None
    shards = load(0, 1)  # every member learns from every training row
    for i in range(env.rank, len(cfg.ensemble.members), env.world):
        base = member_prefix(job.run_id, i)
        if store.artifacts.exists(f"{base}/result.json"):
            continue  # finished before a restart
        mcfg = member_config(cfg, i)
        framework = resolve_framework(mcfg.model.name, mcfg.model.framework)
        if framework == "sklearn":
            est = skl.build_estimator(mcfg.model.name, shards.task, mcfg.model.params,
                                      mcfg.seed)
            skl.fit_estimator(est, shards.x_train, shards.y_train)
            store.artifacts.put_bytes(f"{base}/{skl.WEIGHTS_FILE}", skl.dumps(est))
            summary: dict[str, Any] = {"samples": len(shards.x_train)}
        else:
            member_job = Job(config=mcfg, run_id=f"{job.run_id}/members/{i}",
                             dataset=job.dataset, attempt=job.attempt)
            result = train(member_job, Single(env), shards, store.artifacts, report=report)
            store.artifacts.put_bytes(f"{base}/weights.safetensors",
                                      st_save(result.state_dict))
            summary = result.summary()
        summary["framework"] = framework
        store.artifacts.put_bytes(f"{base}/result.json", json.dumps(summary).encode())
    return True


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
        name = skl.WEIGHTS_FILE if framework == "sklearn" else "weights.safetensors"
        summary = json.loads(store.artifacts.get_bytes(f"{base}/result.json"))
        member = Member(framework, m.model.name, m.model.params,
                        store.artifacts.get_bytes(f"{base}/{name}"))
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
        spec = ModelSpec(framework="ensemble", architecture="ensemble", task=ds.task,
                         input_shape=list(ds.input_shape), classes=ds.classes)
        frame = LoadedModel(name=self.cfg.model_name, version=0, spec=spec, weights_blob=b"")
        members, rows, val_out, test_out = [], [], [], []
        for i in range(len(self.members)):
            member, summary = self._member(store, run_id, i)
            predictor = load_predictor(member_model(frame, i, member), PredictOptions())
            val_out.append(predictor.predict(xv))
            test_out.append(predictor.predict(xt))
            members.append(member)
            rows.append({"index": i, "model": member.architecture, "framework": member.framework,
                         "seed": self.members[i].seed, "val": self._score(val_out[-1], yv),
                         "test": self._score(test_out[-1], yt),
                         "global_step": summary.get("global_step"),
                         "samples_per_s": summary.get("samples_per_s")})
        meta, meta_blob = None, None
        if self.how == "stacking":
            assert self.cfg.ensemble is not None
            mm = self.cfg.ensemble.meta
            name = mm.name
            if not self.classify and name == "sklearn_logistic":
                name = "sklearn_linear"  # the default meta-learner, for a regressor
            meta = skl.build_estimator(name, ds.task, mm.params, self.cfg.seed)
            skl.fit_estimator(meta, stack_features(val_out, self.classify), yv)
            meta_blob = skl.dumps(meta)
        val = self._score(combine(self.how, val_out, meta, self.classify, self.outputs), yv)
        test = self._score(combine(self.how, test_out, meta, self.classify, self.outputs), yt)
        params = {"combine": self.how, "members": [m.doc() for m in members],
                  **({"meta": self.cfg.ensemble.meta.name} if meta is not None
                     and self.cfg.ensemble else {})}
        return Combined(blob=pack(members, meta_blob), test=test,
                        summary={"members": rows, "ensemble": {"val": val, "test": test},
                                 "combine": self.how},
                        spec={"framework": "ensemble", "architecture": "ensemble",
                              "params": params})
