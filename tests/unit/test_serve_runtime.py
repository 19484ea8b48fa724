"""Runtimes rebuild a registered version and give what a direct call gives: softmax of the
torch net, predict_proba of the scikit-learn estimator (via skops and via ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from stratum.config import Settings
from stratum.errors import IntegrityError
from stratum.serve.runtime import load_runtime
from stratum.serve.runtimes.sklearn_rt import load_skops
from stratum.store import ModelSpec, Store, load_model, register_model
from stratum.train.zoo import build_model


@pytest.mark.parametrize(("arch", "shape", "params", "nhwc"), [
    ("mlp", [5], {"hidden": [8]}, False),
    ("cnn", [1, 28, 28], {}, True),   # served channels-last: same numbers, other layout
    ("resnet", [3, 16, 16], {}, True),
])
def test_torch_runtime_matches_the_network(store: Store, settings: Settings, arch: str,
                                           shape: list[int], params: dict[str, object],
                                           nhwc: bool) -> None:
    torch.manual_seed(1)
    net = build_model(arch, shape, 3, **params).eval()
    spec = ModelSpec(architecture=arch, params=params, input_shape=shape,
                     classes=["a", "b", "c"])
    register_model(store.meta, store.artifacts, "tiny", spec, weights=net.state_dict())
    rt = load_runtime(load_model(store.meta, store.artifacts, "tiny", "1"), settings.serve)
    assert getattr(rt, "channels_last", None) is nhwc
    x = np.random.default_rng(0).normal(size=(7, *shape)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(rt.predict(x), want, rtol=1e-4, atol=1e-6)


def _iris_model() -> tuple[LogisticRegression, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(X, y), X[:20].astype(np.float32)


def test_sklearn_runtime_via_skops(store: Store, settings: Settings) -> None:
    import skops.io as sio

    est, X = _iris_model()
    spec = ModelSpec(framework="sklearn", architecture="logistic", input_shape=[4],
                     classes=[0, 1, 2], weights_file="model.skops")
    register_model(store.meta, store.artifacts, "iris", spec, weights_blob=sio.dumps(est))
    rt = load_runtime(load_model(store.meta, store.artifacts, "iris"), settings.serve)
    np.testing.assert_allclose(rt.predict(X), est.predict_proba(X), rtol=1e-5)


def test_onnx_runtime_via_skl2onnx(store: Store, settings: Settings) -> None:
    from skl2onnx import to_onnx

    est, X = _iris_model()
    onx = to_onnx(est, X[:1], options={id(est): {"zipmap": False}})
    spec = ModelSpec(framework="onnx", architecture="logistic", input_shape=[4],
                     classes=[0, 1, 2], weights_file="model.onnx")
    register_model(store.meta, store.artifacts, "iris", spec,
                   weights_blob=onx.SerializeToString())
    rt = load_runtime(load_model(store.meta, store.artifacts, "iris"), settings.serve)
    np.testing.assert_allclose(rt.predict(X), est.predict_proba(X), rtol=1e-4, atol=1e-5)


def test_skops_refuses_foreign_types() -> None:
    import skops.io as sio

    blob = sio.dumps({"f": np.float32(1.0), "t": IntegrityError})  # a non-sklearn type
    with pytest.raises(IntegrityError, match="refusing"):
        load_skops(blob, "model x v1")
