"""Runtimes rebuild a registered version and give what a direct call gives: softmax of the
torch net, predict_proba of the scikit-learn estimator (via skops and via ONNX)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from stratum.config import ServeSettings, Settings
from stratum.errors import IntegrityError
from stratum.models import build_model
from stratum.models.estimators import loads as load_skops
from stratum.serve.runtime import load_runtime
from stratum.store import ModelSpec, Store, load_model, register_model


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
@pytest.mark.parametrize(("arch", "shape", "params", "nhwc"), [
    ("mlp", [5], {"hidden": [8]}, False),
    ("cnn", [1, 28, 28], {}, True),   # eager: served channels-last, same numbers
    ("resnet", [3, 16, 16], {}, True),
])
def test_torch_runtime_matches_the_network(store: Store, settings: Settings, arch: str,
                                           shape: list[int], params: dict[str, object],
                                           nhwc: bool, backend: str) -> None:
    torch.manual_seed(1)
    net = build_model(arch, shape, 3, **params).eval()
    spec = ModelSpec(architecture=arch, params=params, input_shape=shape,
                     classes=["a", "b", "c"])
    register_model(store.meta, store.artifacts, "tiny", spec, weights=net.state_dict())
    serve = settings.serve.model_copy(update={"torch_backend": backend, "device": "cpu"})
    rt = load_runtime(load_model(store.meta, store.artifacts, "tiny", "1"), serve,
                      settings.home / "cache")
    assert getattr(rt, "channels_last", None) is nhwc
    assert getattr(rt, "backend", None) == backend
    x = np.random.default_rng(0).normal(size=(7, *shape)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(rt.predict(x), want, rtol=1e-4, atol=1e-6)


def on_cpu(settings: Settings) -> ServeSettings:
    """The serve settings on the CPU: what the ONNX Runtime tests below are about (on a
    machine with a GPU, ``device: auto`` would run torch nets there, eagerly)."""
    return settings.serve.model_copy(update={"device": "cpu"})


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [False, True])
def test_torch_runtime_on_each_device_matches_the_network(
        store: Store, settings: Settings, device: str, bf16: bool) -> None:
    """Eager on the device asked for (the GPU where there is one); bf16 autocast only on a
    GPU, where it may move probabilities in the third decimal."""
    torch.manual_seed(2)
    net = build_model("cnn", [1, 28, 28], 3).eval()
    spec = ModelSpec(architecture="cnn", input_shape=[1, 28, 28], classes=["a", "b", "c"])
    register_model(store.meta, store.artifacts, "dev", spec, weights=net.state_dict())
    serve = settings.serve.model_copy(update={"device": device, "bf16": bf16})
    rt = load_runtime(load_model(store.meta, store.artifacts, "dev", "1"), serve,
                      settings.home / "cache")
    on_gpu = device == "cuda"
    assert str(getattr(rt, "device", "cpu")).startswith(device)
    assert getattr(rt, "bf16", False) is (bf16 and on_gpu)
    assert rt.backend == ("eager" if on_gpu else "onnxruntime")
    x = np.random.default_rng(1).normal(size=(9, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    got = rt.predict(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=3e-2 if bf16 and on_gpu else 1e-4)


def test_auto_device_is_the_gpu_only_when_this_process_was_given_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stratum.errors import ConfigError
    from stratum.serve.runtime import replica_device

    for hidden in ("", "-1"):  # what Ray sets for an actor that asked for no GPU
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert replica_device("auto") == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert replica_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert replica_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert replica_device("cuda") == "cuda"
    else:
        with pytest.raises(ConfigError, match="sees no GPU"):
            replica_device("cuda")


def branchy(input_shape: list[int], num_outputs: int) -> torch.nn.Module:
    """A net whose path depends on the data: torch.export cannot capture it."""

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Linear(input_shape[0], num_outputs)
            self.b = torch.nn.Linear(input_shape[0], num_outputs)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) if float(x.sum()) > 0 else self.b(x)

    return Branchy()


def test_onnx_export_is_cached_checked_and_falls_back_to_eager(
        store: Store, settings: Settings) -> None:
    torch.manual_seed(2)
    net = build_model("mlp", [6], 2, hidden=[4]).eval()
    spec = ModelSpec(architecture="mlp", params={"hidden": [4]}, input_shape=[6],
                     classes=[0, 1])
    register_model(store.meta, store.artifacts, "m", spec, weights=net.state_dict())
    cache = settings.home / "cache"
    loaded = load_model(store.meta, store.artifacts, "m", "1")
    first = load_runtime(loaded, on_cpu(settings), cache)
    (entry,) = (cache / "onnx").iterdir()
    x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(first.predict(x), want, rtol=1e-4, atol=1e-6)
    stamp = entry.stat().st_mtime_ns
    assert load_runtime(loaded, on_cpu(settings), cache).backend == "onnxruntime"  # type: ignore[attr-defined]
    assert entry.stat().st_mtime_ns == stamp  # served from the cache, not exported again
    entry.write_bytes(b"not an onnx model")  # a damaged entry is replaced, not trusted
    again = load_runtime(loaded, on_cpu(settings), cache)
    assert again.backend == "onnxruntime" and entry.read_bytes() != b"not an onnx model"  # type: ignore[attr-defined]
    np.testing.assert_allclose(again.predict(x), want, rtol=1e-4, atol=1e-6)

    spec = ModelSpec(architecture=f"{__name__}:branchy", input_shape=[6], classes=[0, 1])
    register_model(store.meta, store.artifacts, "b", spec,
                   weights=branchy([6], 2).state_dict())
    rt = load_runtime(load_model(store.meta, store.artifacts, "b", "1"), on_cpu(settings), cache)
    assert rt.backend == "eager" and rt.fallback_reason  # type: ignore[attr-defined]
    assert rt.predict(x).shape == (5, 2)


def _iris_model() -> tuple[LogisticRegression, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(X, y), X[:20].astype(np.float32)


def test_sklearn_runtime_via_skops(store: Store, settings: Settings) -> None:
    import skops.io as sio

    est, X = _iris_model()
    spec = ModelSpec(framework="sklearn", architecture="logistic", input_shape=[4],
                     classes=[0, 1, 2], weights_file="model.skops")
    register_model(store.meta, store.artifacts, "iris", spec, weights_blob=sio.dumps(est))
    rt = load_runtime(load_model(store.meta, store.artifacts, "iris"), on_cpu(settings))
    np.testing.assert_allclose(rt.predict(X), est.predict_proba(X), rtol=1e-5)


def test_onnx_runtime_via_skl2onnx(store: Store, settings: Settings) -> None:
    from skl2onnx import to_onnx

    est, X = _iris_model()
    onx = to_onnx(est, X[:1], options={id(est): {"zipmap": False}})
    spec = ModelSpec(framework="onnx", architecture="logistic", input_shape=[4],
                     classes=[0, 1, 2], weights_file="model.onnx")
    register_model(store.meta, store.artifacts, "iris", spec,
                   weights_blob=onx.SerializeToString())
    rt = load_runtime(load_model(store.meta, store.artifacts, "iris"), on_cpu(settings))
    np.testing.assert_allclose(rt.predict(X), est.predict_proba(X), rtol=1e-4, atol=1e-5)


def test_skops_refuses_foreign_types() -> None:
    import skops.io as sio

    blob = sio.dumps({"f": np.float32(1.0), "t": IntegrityError})  # a non-sklearn type
    with pytest.raises(IntegrityError, match="refusing"):
        load_skops(blob, "model x v1")


def test_a_cached_export_serves_without_torch(store: Store, settings: Settings) -> None:
    """A replacement replica's fast start: the export cache entry carries the eager net's
    probe outputs, so a fresh process serves it without importing torch."""
    import json
    import subprocess
    import sys

    torch.manual_seed(4)
    net = build_model("mlp", [6], 3, hidden=[4]).eval()
    spec = ModelSpec(architecture="mlp", params={"hidden": [4]}, input_shape=[6],
                     classes=[0, 1, 2])
    register_model(store.meta, store.artifacts, "m", spec, weights=net.state_dict())
    cache = settings.home / "cache"
    load_runtime(load_model(store.meta, store.artifacts, "m", "1"), on_cpu(settings), cache)
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from stratum.config import load_settings\n"
        "from stratum.serve.runtime import load_runtime\n"
        "from stratum.store import Store, load_model\n"
        "s = load_settings(home=sys.argv[1], serve={'device': 'cpu'}); st = Store.open(s)\n"
        "rt = load_runtime(load_model(st.meta, st.artifacts, 'm', '1'), s.serve,"
        " s.home / 'cache')\n"
        "x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'alembic': 'alembic' in"
        " sys.modules, 'backend': rt.backend, 'y': rt.predict(x).tolist()}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(settings.home)], check=True,
                         capture_output=True, text=True, timeout=120)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["backend"] == "onnxruntime"
    assert got["torch"] is False and got["alembic"] is False, got
    x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(np.asarray(got["y"]), want, rtol=1e-4, atol=1e-6)


def test_cache_entries_without_or_with_a_wrong_probe_are_rewritten(
        store: Store, settings: Settings) -> None:
    from stratum.models import onnx as tx
    from stratum.models.exported import from_cache

    torch.manual_seed(5)
    net = build_model("mlp", [6], 2, hidden=[4]).eval()
    spec = ModelSpec(architecture="mlp", params={"hidden": [4]}, input_shape=[6],
                     classes=[0, 1])
    register_model(store.meta, store.artifacts, "m", spec, weights=net.state_dict())
    cache = settings.home / "cache"
    loaded = load_model(store.meta, store.artifacts, "m", "1")
    load_runtime(loaded, on_cpu(settings), cache)
    assert from_cache(loaded, None, cache) is not None
    (entry,) = (cache / "onnx").iterdir()
    plain = tx.export_onnx(net, [6])  # as entries were cached before they carried a probe
    with torch.no_grad():
        want = net(torch.from_numpy(tx.probe([6]))).numpy()
    for stale in (plain, tx.with_probe(plain, want + 1.0)):
        entry.write_bytes(stale)
        assert from_cache(loaded, None, cache) is None  # not trusted without the network
        assert load_runtime(loaded, on_cpu(settings), cache).backend == "onnxruntime"
        assert from_cache(loaded, None, cache) is not None  # the probe is written back


def test_one_export_at_a_time_per_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Replicas of a first deploy start together: the second waits for the first's export
    (then reads its entry) instead of exporting beside it on the same cores."""
    import threading
    import time

    from stratum.models import onnx as tx

    order: list[str] = []
    with tx.export_lock(tmp_path, "k"):
        def second() -> None:
            with tx.export_lock(tmp_path, "k"):
                order.append("second")
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]
    with tx.export_lock(tmp_path, "other"), tx.export_lock(tmp_path, "k", timeout=1):
        pass  # another key is not held up; a free one is taken at once
    with tx.export_lock(tmp_path, "k"):
        t0 = time.monotonic()
        with tx.export_lock(tmp_path, "k", timeout=0.3):  # a hung exporter: go on after
            assert time.monotonic() - t0 >= 0.3
