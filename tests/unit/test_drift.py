"""Drift statistics on generated data with fixed seeds; thresholds, not exact values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stratum.errors import DataError
from stratum.monitor.drift import (
    DriftMonitor,
    ReferenceProfile,
    _ks_numpy,
    drift_report,
    ks_2samp,
    psi,
)
from stratum.monitor.metrics import DriftGauges, new_registry, sample


def test_psi_near_zero_on_same_distribution_large_on_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=2000)) < 0.05
    assert psi(ref, rng.normal(0.5, 1.0, size=2000)) > 0.2
    assert psi(ref, rng.normal(0.0, 2.0, size=2000)) > 0.2  # spread, same mean
    assert psi(ref, rng.normal(2.0, 1.0, size=2000)) > 1.0


def test_psi_on_categories_and_constant_features() -> None:
    rng = np.random.default_rng(1)
    ref = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=4000)
    assert psi(ref, rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=1000)) < 0.05
    assert psi(ref, rng.choice(["a", "b", "c", "new"], p=[0.2, 0.2, 0.1, 0.5], size=1000)) > 0.5
    # An always-zero pixel that lights up is drift; staying zero is not.
    zeros = np.zeros(1000)
    assert psi(zeros, np.zeros(500)) < 1e-6
    assert psi(zeros, np.r_[np.zeros(400), np.ones(100)]) > 0.2


@pytest.mark.parametrize("n,m,shift", [(300, 200, 0.0), (500, 400, 0.3), (2000, 500, 0.1)])
def test_ks_matches_scipy(n: int, m: int, shift: float) -> None:
    from scipy import stats  # scikit-learn depends on SciPy: always installed
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(shift, 1.0, size=m)
    ref = stats.ks_2samp(a, b, method="asymp")
    ours = _ks_numpy(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=0.25, abs=0.01)
    assert ks_2samp(a, b).statistic == pytest.approx(ref.statistic, abs=1e-12)
    with pytest.raises(DataError):
        ks_2samp([], b)


def test_report_flags_only_the_shifted_feature() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(size=(3000, 4))
    cur = rng.normal(size=(500, 4))
    cur[:, 2] += 1.0
    report = drift_report(train, cur, ["a", "b", "c", "d"])
    assert report.drifted == ["c"]
    by = {f.name: f for f in report.features}
    assert by["c"].psi > 0.2 and by["c"].ks_pvalue is not None and by["c"].ks_pvalue < 1e-6
    assert max(by[k].psi for k in "abd") < 0.1
    assert report.top(1)[0].name == "c"
    # Profiles are JSON: stored with a model version, loaded by the learner.
    profile = ReferenceProfile.fit({"a": train[:, 0], "c": train[:, 2]})
    again = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.compare({"a": cur[:, 0], "c": cur[:, 2]}).drifted == ["c"]
    with pytest.raises(DataError, match="features"):
        again.compare(cur)


def test_monitor_alerts_on_drifted_window_and_accuracy_drop() -> None:
    rng = np.random.default_rng(3)
    registry = new_registry()
    metrics = DriftGauges.create(registry)
    profile = ReferenceProfile.fit(rng.normal(size=(3000, 5)))
    mon = DriftMonitor(profile, model="m", window=400, feature_fraction=0.4,
                       baseline_accuracy=0.95, accuracy_drop=0.1, metrics=metrics)
    assert mon.observe(rng.normal(size=(300, 5))) == []  # window not full yet
    assert mon.observe(rng.normal(size=(300, 5))) == []  # one clean window
    assert len(mon.reports) == 1
    shifted = rng.normal(size=(500, 5))
    shifted[:, :3] += 0.8
    alerts = mon.observe(shifted)  # completes the 2nd window (mixed) and maybe fires
    alerts += mon.observe(shifted)
    assert [a.rule for a in alerts][-1] == "drift.input"
    assert alerts[-1].value >= 0.4 and alerts[-1].subject == "m"
    assert sample(registry, "stratum_learner_drift_features_drifted_ratio", {"model": "m"}) \
        >= 0.4
    assert mon.observe_outcomes([True] * 390 + [False] * 10) == []  # 0.975: fine
    acc_alerts = mon.observe_outcomes([True] * 300 + [False] * 100)  # 0.75 < 0.85
    assert [a.rule for a in acc_alerts] == ["drift.accuracy"]
    assert acc_alerts[0].value == pytest.approx(0.75)
    assert sample(registry, "stratum_learner_feedback_accuracy_ratio",
                  {"model": "m"}) == pytest.approx(0.75)
