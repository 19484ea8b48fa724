"""Input drift against the training data: PSI per feature, KS for numeric features.

A ``ReferenceProfile`` is fitted once on the training inputs (bin edges at reference
quantiles, the reference share per bin, and a sample for KS) and is JSON-serialisable,
so it can be stored with a model version. ``profile.compare(window)`` gives a
``DriftReport``; ``DriftMonitor`` cuts a stream of inputs and feedback outcomes into
windows and returns ``Alert``s when the share of drifted features, or the feedback
accuracy, crosses its threshold.

PSI = sum over bins of (cur - ref) * ln(cur / ref), shares floored at ``eps``. Rules of
thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 significant shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from stratum.errors import DataError
from stratum.monitor.alerts import Alert
from stratum.monitor.metrics import DriftGauges

EPS = 1e-4
_MAX_CATEGORIES = 20
_OTHER = "__other__"


class KSResult(NamedTuple):
    statistic: float
    pvalue: float


# -- statistics -------------------------------------------------------------------------
def psi(reference: Any, current: Any, bins: int = 10, eps: float = EPS) -> float:
    """PSI of ``current`` against ``reference`` (numeric: quantile bins of the reference)."""
    prof = FeatureProfile.fit("x", np.asarray(reference), bins=bins, sample_size=0)
    return prof.psi(np.asarray(current), eps)


def ks_2samp(a: Any, b: Any, *, use_scipy: bool = True) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test (two-sided); scipy's when installed."""
    x, y = _numeric(a), _numeric(b)
    if len(x) == 0 or len(y) == 0:
        raise DataError("KS test needs two non-empty samples")
    if use_scipy:
        try:
            from scipy import stats
        except ImportError:
            pass
        else:
            r = stats.ks_2samp(x, y)
            return KSResult(float(r.statistic), float(r.pvalue))
    return _ks_numpy(x, y)


def _ks_numpy(x: np.ndarray, y: np.ndarray) -> KSResult:
    """KS statistic exactly; p-value from the Kolmogorov distribution with Stephens'
    small-sample correction (close to scipy's asymptotic method for n, m >~ 50)."""
    x, y = np.sort(np.asarray(x, np.float64)), np.sort(np.asarray(y, np.float64))
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    d = float(np.max(np.abs(cdf_x - cdf_y)))
    en = math.sqrt(len(x) * len(y) / (len(x) + len(y)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return KSResult(d, 1.0)
    k = np.arange(1, 101)
    p = float(2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)))
    return KSResult(d, min(1.0, max(0.0, p)))


def _numeric(a: Any) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64).ravel()
    return arr[~np.isnan(arr)]


# -- profiles ---------------------------------------------------------------------------
@dataclass
class FeatureProfile:
    """What drift needs to know about one training feature."""

    name: str
    kind: Literal["numeric", "categorical"]
    edges: list[float] = field(default_factory=list)  # numeric: inner bin edges
    categories: list[str] = field(default_factory=list)  # categorical: top categories
    proportions: list[float] = field(default_factory=list)  # reference share per bin
    sample: list[float] = field(default_factory=list)  # numeric: for KS

    @classmethod
    def fit(cls, name: str, values: np.ndarray, *, bins: int = 10, sample_size: int = 2000,
            rng: np.random.Generator | None = None) -> FeatureProfile:
        values = np.asarray(values).ravel()
        if values.size == 0:
            raise DataError(f"feature {name!r}: cannot profile an empty reference")
        if values.dtype.kind in "biuf":
            v = values.astype(np.float64)
            finite = v[~np.isnan(v)]
            qs = (np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]) if finite.size
                  else np.empty(0))
            prof = cls(name, "numeric", edges=[float(e) for e in np.unique(qs)])
            if sample_size and finite.size:
                rng = rng or np.random.default_rng(0)
                pick = finite if finite.size <= sample_size else rng.choice(
                    finite, sample_size, replace=False)
                prof.sample = [float(s) for s in pick]
            prof.proportions = prof._shares(v, 0.0)
            return prof
        labels, counts = np.unique(values.astype(str), return_counts=True)
        top = labels[np.argsort(-counts, kind="stable")[:_MAX_CATEGORIES]]
        prof = cls(name, "categorical", categories=[str(c) for c in top])
        prof.proportions = prof._shares(values, 0.0)
        return prof

    def _shares(self, values: np.ndarray, eps: float) -> list[float]:
        """Share of ``values`` per bin; numeric bins are edges + one for NaN."""
        if self.kind == "numeric":
            v = np.asarray(values, dtype=np.float64).ravel()
            nan = np.isnan(v)
            idx = np.searchsorted(np.asarray(self.edges), v[~nan], side="left")
            counts = np.bincount(idx, minlength=len(self.edges) + 1).astype(np.float64)
            counts = np.append(counts, nan.sum())
        else:
            index = {c: i for i, c in enumerate(self.categories)}
            idx = np.fromiter((index.get(str(x), len(index)) for x in np.ravel(values)),
                              dtype=np.int64)
            counts = np.bincount(idx, minlength=len(index) + 1).astype(np.float64)
        shares = counts / max(1.0, counts.sum())
        return [float(s) for s in np.maximum(shares, eps)] if eps else shares.tolist()

    def sample_array(self) -> np.ndarray:
        cached: np.ndarray | None = self.__dict__.get("_sample_arr")
        if cached is None:
            cached = self.__dict__["_sample_arr"] = np.sort(np.asarray(self.sample, np.float64))
        return cached

    def psi(self, values: np.ndarray, eps: float = EPS) -> float:
        ref = np.maximum(np.asarray(self.proportions), eps)
        cur = np.asarray(self._shares(values, eps))
        return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass
class FeatureDrift:
    name: str
    kind: str
    psi: float
    ks_statistic: float | None
    ks_pvalue: float | None
    drifted: bool


@dataclass
class DriftReport:
    """Per-feature drift of one window against the training data."""

    features: list[FeatureDrift]
    n_reference: int
    n_current: int
    psi_threshold: float

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    @property
    def drifted_fraction(self) -> float:
        return len(self.drifted) / max(1, len(self.features))

    @property
    def max_psi(self) -> float:
        return max((f.psi for f in self.features), default=0.0)

    def top(self, k: int = 10) -> list[FeatureDrift]:
        return sorted(self.features, key=lambda f: -f.psi)[:k]

    def to_dict(self, top: int | None = 20) -> dict[str, Any]:
        feats = self.top(top) if top else self.features
        return {"n_reference": self.n_reference, "n_current": self.n_current,
                "drifted_fraction": self.drifted_fraction, "max_psi": self.max_psi,
                "drifted": self.drifted[:100], "features": [asdict(f) for f in feats]}


@dataclass
class ReferenceProfile:
    """Drift profiles of every input feature of a training set."""

    features: list[FeatureProfile]
    n: int

    @classmethod
    def fit(cls, data: np.ndarray | Mapping[str, Any], feature_names: Sequence[str] | None = None,
            *, bins: int = 10, sample_size: int = 2000, seed: int = 0) -> ReferenceProfile:
        """Profile a training set: a 2-D+ array (rows first; extra dims are flattened into
        features named ``feature_names`` or ``x0, x1, ...``) or columns by name."""
        names, cols, n = _columns(data, feature_names)
        rng = np.random.default_rng(seed)
        feats = [FeatureProfile.fit(nm, c, bins=bins, sample_size=sample_size, rng=rng)
                 for nm, c in zip(names, cols, strict=True)]
        return cls(feats, n)

    def compare(self, current: np.ndarray | Mapping[str, Any], *, psi_threshold: float = 0.2,
                ks_alpha: float = 0.01, eps: float = EPS) -> DriftReport:
        """Drift of ``current`` (same layout as the reference). A feature drifted if its
        PSI exceeds ``psi_threshold`` or its KS p-value is below ``ks_alpha`` divided by
        the number of features (Bonferroni: many features, few false alarms)."""
        _, cols, n = _columns(current, [f.name for f in self.features])
        if len(cols) != len(self.features):
            raise DataError(f"drift window has {len(cols)} features, the reference "
                            f"{len(self.features)}", hint="pass inputs in training layout")
        alpha = ks_alpha / max(1, len(self.features))
        out = []
        for prof, col in zip(self.features, cols, strict=True):
            value = prof.psi(col, eps)
            ks: KSResult | None = None
            if prof.kind == "numeric" and len(prof.sample) > 1:
                cur = _numeric(col)
                # numpy KS (asymptotic p-value): scipy's per-call overhead is ~1 ms, too
                # slow for hundreds of pixel features per window.
                ks = _ks_numpy(prof.sample_array(), cur) if cur.size else None
            drifted = value > psi_threshold or (ks is not None and ks.pvalue < alpha)
            out.append(FeatureDrift(prof.name, prof.kind, value,
                                    ks.statistic if ks else None, ks.pvalue if ks else None,
                                    drifted))
        return DriftReport(out, self.n, n, psi_threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "features": [asdict(f) for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        return cls([FeatureProfile(**f) for f in d["features"]], int(d["n"]))


def _columns(data: Any, names: Sequence[str] | None) -> tuple[list[str], list[np.ndarray], int]:
    if isinstance(data, Mapping):
        keys = list(names) if names else list(data)
        missing = [k for k in keys if k not in data]
        if missing:
            raise DataError(f"drift input misses the features {missing[:5]}")
        cols = [np.asarray(data[k]) for k in keys]
        return keys, cols, len(cols[0]) if cols else 0
    arr = np.asarray(data)
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise DataError("drift input has no rows")
    arr = arr.reshape(arr.shape[0], -1)
    keys = list(names) if names else [f"x{i}" for i in range(arr.shape[1])]
    if len(keys) != arr.shape[1]:
        raise DataError(f"drift input has {arr.shape[1]} features, expected {len(keys)}")
    return keys, [arr[:, i] for i in range(arr.shape[1])], arr.shape[0]


def drift_report(reference: Any, current: Any, feature_names: Sequence[str] | None = None,
                 **thresholds: float) -> DriftReport:
    """One-shot report of ``current`` against ``reference`` (both raw arrays/columns)."""
    return ReferenceProfile.fit(reference, feature_names).compare(current, **thresholds)


# -- windows and alerts ---------------------------------------------------------------
class DriftMonitor:
    """Cuts inputs and feedback outcomes into windows; returns alerts past threshold.

    ``observe(X)`` buffers input rows; each full window of ``window`` rows is compared
    with the profile, and an ``alert drift.input`` results when at least
    ``feature_fraction`` of the features drifted. ``observe_outcomes(correct)`` does the
    same for feedback: ``drift.accuracy`` when window accuracy falls more than
    ``accuracy_drop`` below ``baseline_accuracy``. Metrics, when given, get the numbers.
    """

    def __init__(
        self, profile: ReferenceProfile, *, model: str = "model", window: int = 500,
        psi_threshold: float = 0.2, ks_alpha: float = 0.01, feature_fraction: float = 0.1,
        baseline_accuracy: float | None = None, accuracy_drop: float = 0.1,
        metrics: DriftGauges | None = None,
    ) -> None:
        self.profile, self.model, self.window = profile, model, window
        self.psi_threshold, self.ks_alpha = psi_threshold, ks_alpha
        self.feature_fraction = feature_fraction
        self.baseline_accuracy, self.accuracy_drop = baseline_accuracy, accuracy_drop
        self.metrics = metrics
        self.reports: list[DriftReport] = []
        self.accuracies: list[float] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._outcomes: list[bool] = []

    @classmethod
    def from_settings(cls, profile: ReferenceProfile, online: Any, **kwargs: Any) -> DriftMonitor:
        """Thresholds from ``settings.online`` (``OnlineSettings``)."""
        return cls(profile, window=online.drift_window, psi_threshold=online.drift_psi_threshold,
                   ks_alpha=online.drift_ks_alpha, feature_fraction=online.drift_feature_fraction,
                   accuracy_drop=online.accuracy_drop, **kwargs)

    def observe(self, rows: np.ndarray) -> list[Alert]:
        """Add input rows (training layout); returns alerts of windows completed now."""
        arr = np.asarray(rows)
        arr = arr.reshape(arr.shape[0], -1)
        self._rows.append(arr)
        self._buffered += arr.shape[0]
        alerts: list[Alert] = []
        while self._buffered >= self.window:
            data = np.concatenate(self._rows)
            win, rest = data[: self.window], data[self.window:]
            self._rows, self._buffered = [rest], rest.shape[0]
            alerts += self._check_inputs(win)
        return alerts

    def _check_inputs(self, win: np.ndarray) -> list[Alert]:
        report = self.profile.compare(win, psi_threshold=self.psi_threshold,
                                      ks_alpha=self.ks_alpha)
        self.reports.append(report)
        if self.metrics is not None:
            for f in report.top(20):
                self.metrics.psi.labels(self.model, f.name).set(f.psi)
                if f.ks_statistic is not None:
                    self.metrics.ks.labels(self.model, f.name).set(f.ks_statistic)
            self.metrics.drifted.labels(self.model).set(report.drifted_fraction)
        if report.drifted_fraction < self.feature_fraction:
            return []
        return [Alert(
            "drift.input", self.model, report.drifted_fraction, self.feature_fraction,
            f"{len(report.drifted)} of {len(report.features)} input features drifted "
            f"(max PSI {report.max_psi:.3f}) over the last {self.window} requests",
            {"window": len(self.reports), "report": report.to_dict(top=10)},
        )]

    def observe_outcomes(self, correct: Sequence[bool] | np.ndarray) -> list[Alert]:
        """Add feedback outcomes (prediction was right?); alerts of completed windows."""
        self._outcomes.extend(bool(c) for c in np.asarray(correct).ravel())
        alerts: list[Alert] = []
        while len(self._outcomes) >= self.window:
            win, self._outcomes = self._outcomes[: self.window], self._outcomes[self.window:]
            acc = sum(win) / len(win)
            self.accuracies.append(acc)
            if self.metrics is not None:
                self.metrics.accuracy.labels(self.model).set(acc)
            base = self.baseline_accuracy
            if base is not None and acc < base - self.accuracy_drop:
                alerts.append(Alert(
                    "drift.accuracy", self.model, acc, base - self.accuracy_drop,
                    f"accuracy on the last {self.window} feedback events is {acc:.3f}, "
                    f"baseline {base:.3f}", {"window": len(self.accuracies), "baseline": base},
                ))
        return alerts
