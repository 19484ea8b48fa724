"""Stacking without a leak: the meta-learner learns from out-of-fold predictions.

A meta-learner fitted on the members' predictions for rows they trained on learns to trust
whichever member overfits most; one fitted on the validation split alone (57 rows on
breast_cancer, where one member was perfect) learns to follow that member. So, as
scikit-learn's ``StackingClassifier(cv=K)`` does, stacking splits the training and
validation rows together ("all rows": everything but the test split) into ``folds``
stratified folds; each member is trained once per fold on the other folds and predicts the
held-out one (``runs/{run}/members/{i}/folds/{k}.safetensors``: the rows and the member's
outputs for them), and once more on all rows (the member that is served). The meta-learner
is fitted on the members' out-of-fold outputs over all rows.

The same out-of-fold outputs give an honest score for each member and, refitting the
meta-learner fold by fold on them (``cross_validated``), for the stack: a comparison over
every non-test row instead of a small test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from stratum.errors import ConfigError, IntegrityError
from stratum.models.ensemble import meta_outputs
from stratum.store import ArtifactStore


def all_rows(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
             y_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows stacking cross-validates over and refits on: train, then validation."""
    return np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])


def folds(y: np.ndarray, k: int, seed: int, classify: bool) -> list[np.ndarray]:
    """The held-out row indices of each fold; every process computes the same ones."""
    from sklearn.model_selection import KFold, StratifiedKFold  # scikit-learn loads lazily

    if len(y) < k:
        raise ConfigError(f"stacking with {k} folds needs at least {k} training rows, "
                          f"the dataset has {len(y)}", hint="lower ensemble.folds")
    counts = np.unique(y, return_counts=True)[1] if classify else np.array([k])
    # stratified where every class can appear in every fold, else plain shuffled folds
    split = (StratifiedKFold(k, shuffle=True, random_state=seed) if counts.min() >= k
             else KFold(k, shuffle=True, random_state=seed))
    return [held for _, held in split.split(np.zeros((len(y), 1)), y)]


def fold_path(member_base: str, fold: int) -> str:
    return f"{member_base}/folds/{fold}.safetensors"


def fold_bytes(rows: np.ndarray, outputs: np.ndarray) -> bytes:
    return st_save({"rows": rows.astype(np.int64), "outputs": outputs.astype(np.float32)})


def out_of_fold(artifacts: ArtifactStore, member_base: str, k: int, n: int) -> np.ndarray:
    """One member's outputs for all ``n`` rows, each from the model that did not train on it."""
    out: np.ndarray | None = None
    seen = np.zeros(n, dtype=bool)
    for fold in range(k):
        part = st_load(artifacts.get_bytes(fold_path(member_base, fold)))
        rows, values = part["rows"], part["outputs"]
        if out is None:
            out = np.zeros((n, *values.shape[1:]), dtype=np.float32)
        out[rows] = values
        seen[rows] = True
    if out is None or not seen.all():
        raise IntegrityError(f"{member_base}: the folds' predictions do not cover all "
                             f"{n} rows")
    return out


def cross_validated(meta: Any, features: np.ndarray, y: np.ndarray, held: list[np.ndarray],
                    classify: bool, classes: int) -> np.ndarray:
    """The stack's out-of-fold outputs: the meta-learner refitted without each fold."""
    from sklearn.base import clone

    out = np.zeros((len(y), classes) if classify else len(y), dtype=np.float32)
    everything = np.arange(len(y))
    for rows in held:
        rest = np.setdiff1d(everything, rows)
        fitted = clone(meta).fit(features[rest], y[rest])
        out[rows] = meta_outputs(fitted, features[rows], classify, classes)
    return out
