"""What the learner measures against, drawn once from the champion's dataset: a holdout
from its test split (the gate's guard against forgetting), a replay sample of its training
data (mixed into every fine-tune) and the input profile that drift is measured from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stratum.config import OnlineSettings
from stratum.data import open_dataset
from stratum.errors import ConfigError
from stratum.monitor.drift import ReferenceProfile
from stratum.store import Lineage, Store


@dataclass(frozen=True)
class Reference:
    holdout: tuple[np.ndarray, np.ndarray]
    replay: tuple[np.ndarray, np.ndarray]
    profile: ReferenceProfile


def load_reference(store: Store, model: str, lineage: Lineage, cfg: OnlineSettings
                   ) -> Reference:
    """Samples of ``cfg.holdout_rows`` test rows and ``cfg.replay_size`` training rows of
    the dataset version in ``lineage``; the same ones every time (a fixed seed)."""
    if not lineage.dataset:
        raise ConfigError(f"{model} has no dataset in its lineage; the learner needs "
                          "its test split as holdout and its training data for replay")
    ref = f"{lineage.dataset}@{lineage.dataset_version}" if lineage.dataset_version \
        else lineage.dataset
    ds = open_dataset(store, ref)
    rng = np.random.default_rng(0)
    xt, yt = ds.load("test")
    keep = rng.permutation(len(xt))[: cfg.holdout_rows]
    holdout = (xt[keep], yt[keep])
    xr, yr = ds.load("train")
    keep = rng.permutation(len(xr))[: cfg.replay_size]
    profile = ReferenceProfile.fit(xr[keep].reshape(len(keep), -1))
    return Reference(holdout, (xr[keep], yr[keep]), profile)


__all__ = ["Reference", "load_reference"]
