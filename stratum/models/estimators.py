"""scikit-learn estimators: the zoo, fitting, and the skops codec (never pickle).

On load only types from scikit-learn, NumPy and SciPy are trusted; a file that asks for
anything else (which is how a malicious skops file would run code) is refused. Training,
serving and the online learner all load estimators through ``loads``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from stratum.errors import ConfigError, IntegrityError

WEIGHTS_FILE = "model.skops"
_TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.")


def _zoo(task: str) -> dict[str, Callable[..., Any]]:
    from sklearn import ensemble, linear_model, svm

    if task == "classification":
        return {
            "sklearn_logistic": lambda **p: linear_model.LogisticRegression(
                **{"max_iter": 2000, **p}),
            # the L2 strength picked by 5-fold cross-validated log-loss (the stacking default)
            "sklearn_logistic_cv": lambda **p: linear_model.LogisticRegressionCV(
                **{"Cs": 10, "cv": 5, "scoring": "neg_log_loss", "max_iter": 2000,
                   **_new_attributes(linear_model.LogisticRegressionCV), **p}),
            "svc": lambda **p: svm.SVC(**p),
            "random_forest": lambda **p: ensemble.RandomForestClassifier(
                **{"n_estimators": 200, "n_jobs": 1, **p}),
            "gradient_boosting": lambda **p: ensemble.GradientBoostingClassifier(**p),
        }
    return {
        "sklearn_linear": lambda **p: linear_model.Ridge(**{"alpha": 1e-3, **p}),
        "svc": lambda **p: svm.SVR(**p),
        "random_forest": lambda **p: ensemble.RandomForestRegressor(
            **{"n_estimators": 200, "n_jobs": 1, **p}),
        "gradient_boosting": lambda **p: ensemble.GradientBoostingRegressor(**p),
    }


SKLEARN_MODELS = ("sklearn_logistic", "sklearn_logistic_cv", "sklearn_linear", "svc",
                  "random_forest", "gradient_boosting")


def _new_attributes(cls: Any) -> dict[str, Any]:
    """Newer scikit-learn warns on each fit of LogisticRegressionCV until its new defaults
    (simplified fitted attributes, an explicit pure-L2 ``l1_ratios``) are asked for; older
    versions have no such parameter."""
    return {"use_legacy_attributes": False, "l1_ratios": (0.0,)} \
        if "use_legacy_attributes" in cls().get_params() else {}


def is_estimator(obj: Any) -> bool:
    return hasattr(obj, "fit") and hasattr(obj, "predict") and hasattr(obj, "get_params")


def build_estimator(name: str, task: str, params: dict[str, Any], seed: int) -> Any:
    """A zoo estimator by name, or what ``module:function(**params)`` returns."""
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            est = getattr(importlib.import_module(mod), fn)(**params)
        except (ImportError, AttributeError, TypeError) as exc:
            raise ConfigError(f"cannot build estimator {name!r}: {exc}") from exc
    else:
        zoo = _zoo(task)
        if name not in zoo:
            raise ConfigError(
                f"scikit-learn model {name!r} does not exist for {task}",
                hint=f"choose one of {', '.join(sorted(zoo))}")
        try:
            est = zoo[name](**params)
        except TypeError as exc:
            raise ConfigError(f"bad parameters for model {name!r}: {exc}") from exc
    if not is_estimator(est):
        raise ConfigError(f"{name} did not return a scikit-learn estimator")
    if "random_state" in est.get_params():
        est.set_params(random_state=seed)
    return est


def flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1)


def fit_estimator(est: Any, x: np.ndarray, y: np.ndarray) -> Any:
    try:
        est.fit(flat(x), y)
    except ValueError as exc:
        raise ConfigError(f"{type(est).__name__} cannot fit this dataset: {exc}") from exc
    return est


def predict_outputs(est: Any, x: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """Class scores (n, k) for classification (one-hot of the prediction when the
    estimator has no probabilities), (n,) predictions for regression."""
    pred = est.predict(flat(x))
    if task != "classification":
        return np.asarray(pred, dtype=np.float64)
    out = np.zeros((len(x), num_classes))
    out[np.arange(len(x)), np.asarray(pred, dtype=np.int64)] = 1.0
    return out


def dumps(est: Any) -> bytes:
    import skops.io as sio

    data: bytes = sio.dumps(est)
    return data


def loads(blob: bytes, where: str = "a scikit-learn model") -> Any:
    """Load a skops file, trusting only scikit-learn / NumPy / SciPy types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=blob)
    refused = [t for t in untrusted if not t.startswith(_TRUSTED_MODULES)]
    if refused:
        raise IntegrityError(f"{where}: refusing to load types outside "
                             f"scikit-learn/NumPy/SciPy: {refused}")
    return sio.loads(blob, trusted=untrusted)
