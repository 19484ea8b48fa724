"""The replica as a real process: results equal an in-process forward pass, request ids,
the malformed-request matrix (4xx, never 5xx), hot swap under load, drain, /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch

from stratum.config import Settings, load_settings
from stratum.data.preprocessing import Pipeline, build_pipeline
from stratum.models import build_model
from stratum.security.tokens import REPLICA_SECRET_ENV, REPLICA_SECRET_HEADER
from stratum.store import ModelSpec, Store, register_model
from stratum.store.audit import AuditLog
from tests.integration.gateway_fixtures import REPLICA_AUTH, REPLICA_SECRET, gateway
from tests.services import free_port, started

pytestmark = pytest.mark.integration

# Every route but the health probes needs the deployment secret the replica was started with.
AUTH = REPLICA_AUTH
http = httpx.Client(headers=AUTH)

FEATURES = ["a", "b", "c", "colour"]
COLOURS = ["red", "green", "blue"]
CLASSES = ["cat", "dog", "eel"]
ROWS = [[1.0, 2.0, 3.0, "red"], [0.5, -1.0, 2.5, "blue"], [3.0, 0.0, -2.0, "mauve"]]


def _pipeline() -> Pipeline:
    steps = [{"name": f, "kind": "numeric", "scale": "standardize"} for f in FEATURES[:3]]
    steps.append({"name": "colour", "kind": "categorical", "categories": COLOURS})
    return build_pipeline(steps, [1.0, 0.0, 0.5], [2.0, 1.5, 1.0], [0.0, 0.0, 0.0])


def _register_tab(store: Store, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model("mlp", [6], 3, hidden=[16]).eval()
    spec = ModelSpec(architecture="mlp", params={"hidden": [16]}, input_shape=[6],
                     feature_names=FEATURES, classes=CLASSES)
    register_model(store.meta, store.artifacts, "tab", spec, weights=net.state_dict(),
                   preprocessing=_pipeline().to_artifacts())
    return net


@contextmanager
def _replica(settings: Settings, model: str, log: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with started([sys.executable, "-m", "stratum.serve", "--model", model, "--port", str(port),
                  "--name", "front"],
                 ready_url=url + "/v2/health/ready",
                 env={**settings.child_env(), REPLICA_SECRET_ENV: REPLICA_SECRET}, log=log,
                 timeout=90):
        yield url


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    tmp = tmp_path_factory.mktemp("serve")
    settings = load_settings(home=tmp / "home", log_level="WARNING",
                             serve={"max_body_bytes": 64 * 1024, "max_wait_ms": 1.0})
    yield settings, tmp


@pytest.fixture(scope="module")
def tab(home: tuple[Settings, Path]) -> Iterator[tuple[str, torch.nn.Module]]:
    settings, tmp = home
    store = Store.open(settings)
    net = _register_tab(store, seed=0)
    store.close()
    with _replica(settings, "tab@1", tmp / "tab.log") as url:
        yield url, net


def _expected(net: torch.nn.Module, rows: list[list[object]]) -> np.ndarray:
    x = _pipeline().transform({f: [r[i] for r in rows] for i, f in enumerate(FEATURES)})
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), 1).numpy()


def test_predict_and_oip_equal_an_in_process_forward(tab: tuple[str, torch.nn.Module]) -> None:
    url, net = tab
    want = _expected(net, ROWS)
    r = http.post(f"{url}/v1/models/tab:predict", json={"instances": ROWS})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_version"] == 1 and r.headers["x-model-version"] == "1"
    np.testing.assert_allclose([p["probabilities"] for p in doc["predictions"]], want, rtol=1e-5)
    assert [p["class"] for p in doc["predictions"]] == [CLASSES[i] for i in want.argmax(1)]
    # Named features, in any order, through the deployment alias of the model name.
    named = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
    r2 = http.post(f"{url}/v1/models/front:predict", json={"instances": named[::-1]})
    np.testing.assert_allclose([p["probabilities"] for p in r2.json()["predictions"]],
                               want[::-1], rtol=1e-5)
    # OIP: one tensor per feature (the categorical one as BYTES is refused; send numbers
    # through the plain route), so here a numeric-only request with the colour as a column.
    inputs = [{"name": f, "datatype": "FP32", "shape": [3],
               "data": [row[i] for row in ROWS]} for i, f in enumerate(FEATURES[:3])]
    inputs.append({"name": "colour", "datatype": "INT64", "shape": [3], "data": [0, 1, 2]})
    r3 = http.post(f"{url}/v2/models/tab/infer", json={"id": "q1", "inputs": inputs})
    assert r3.status_code == 200, r3.text
    out = {o["name"]: o for o in r3.json()["outputs"]}
    assert r3.json()["id"] == "q1" and out["probabilities"]["shape"] == [3, 3]
    # The pipeline one-hots category names; numbers 0/1/2 are unknown categories.
    rows_unknown = [[*row[:3], "?"] for row in ROWS]
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (3, 3)),
                               _expected(net, rows_unknown), rtol=1e-5)
    assert out["label"]["datatype"] == "BYTES"


def test_request_ids_are_echoed_or_made(tab: tuple[str, torch.nn.Module]) -> None:
    url, _ = tab
    body = {"instances": ROWS[:1]}
    r = http.post(f"{url}/v1/models/tab:predict", json=body, headers={"x-request-id": "abc-1"})
    assert r.headers["x-request-id"] == "abc-1"
    made = {http.post(f"{url}/v1/models/tab:predict", json=body).headers["x-request-id"]
            for _ in range(3)}
    assert len(made) == 3 and all(len(m) == 32 for m in made)
    bad = http.post(f"{url}/v1/models/tab:predict", content=b"{", headers={"x-request-id": "e"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "e"


def _oip(data: object, shape: list[int], datatype: str = "FP32") -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}


MATRIX = [  # (name, method, path, body bytes, headers, expected status)
    ("bad json", "POST", "/v2/models/tab/infer", b'{"inputs": [', {}, 400),
    ("bad json plain", "POST", "/v1/models/tab:predict", b"nope", {}, 400),
    ("not an object", "POST", "/v1/models/tab:predict", b"[1,2]", {}, 400),
    ("no instances", "POST", "/v1/models/tab:predict", b'{"rows": []}', {}, 400),
    ("no inputs", "POST", "/v2/models/tab/infer", b'{"id": "1"}', {}, 400),
    ("no data", "POST", "/v2/models/tab/infer",
     orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}), {}, 400),
    ("empty instances", "POST", "/v1/models/tab:predict", b'{"instances": []}', {}, 400),
    ("wrong shape", "POST", "/v2/models/tab/infer", orjson.dumps(_oip([1, 2, 3], [1, 3])), {}, 422),
    ("shape vs data", "POST", "/v2/models/tab/infer", orjson.dumps(_oip([1, 2, 3], [1, 4])), {},
     400),
    ("wrong shape plain", "POST", "/v1/models/tab:predict", b'{"instances": [[1, 2]]}', {}, 422),
    ("ragged", "POST", "/v1/models/tab:predict", b'{"instances": [[1,2,3,"red"],[1]]}', {}, 422),
    ("wrong dtype BYTES", "POST", "/v2/models/tab/infer",
     orjson.dumps(_oip(["a", "b", "c", "d"], [1, 4], "BYTES")), {}, 422),
    ("wrong dtype strings", "POST", "/v2/models/tab/infer",
     orjson.dumps(_oip(["a", "b", "c", "d"], [1, 4])), {}, 422),
    ("bool tensor", "POST", "/v2/models/tab/infer",
     orjson.dumps(_oip([True] * 4, [1, 4], "BOOL")), {}, 422),
    ("missing feature", "POST", "/v1/models/tab:predict", b'{"instances": [{"a": 1}]}', {}, 422),
    ("unknown datatype", "POST", "/v2/models/tab/infer",
     orjson.dumps(_oip([1, 2, 3, 4], [1, 4], "FP8")), {}, 400),
    ("unknown output", "POST", "/v2/models/tab/infer",
     orjson.dumps({**_oip([1, 2, 3, 4], [1, 4]), "outputs": [{"name": "logits"}]}), {}, 400),
    ("oversize body", "POST", "/v1/models/tab:predict",
     b'{"instances": [' + b"[1,2,3,4]," * 10_000 + b"[1,2,3,4]]}", {}, 413),
    ("unknown model", "POST", "/v2/models/nope/infer", orjson.dumps(_oip([1] * 4, [1, 4])), {},
     404),
    ("unknown model plain", "POST", "/v1/models/nope:predict", b'{"instances": [[1]]}', {}, 404),
    ("unknown version", "POST", "/v2/models/tab/versions/9/infer",
     orjson.dumps(_oip([1, 2, 3, 4], [1, 4])), {}, 404),
    ("unknown route", "GET", "/v3/anything", b"", {}, 404),
    ("wrong method", "GET", "/v2/models/tab/infer", b"", {}, 405),
    ("wrong content type", "POST", "/v1/models/tab:predict", b'{"instances": [[1,2,3,"red"]]}',
     {"content-type": "text/plain"}, 415),
    ("form content type", "POST", "/v2/models/tab/infer", b"a=1",
     {"content-type": "application/x-www-form-urlencoded"}, 415),
    ("bad swap body", "POST", "/admin/swap", b'{"version": 2}', {}, 400),
]


def test_malformed_requests_get_4xx_never_5xx(tab: tuple[str, torch.nn.Module]) -> None:
    url, _ = tab
    wrong = []
    with httpx.Client(base_url=url, headers=AUTH) as c:
        for name, method, path, body, headers, want in MATRIX:
            h = {"content-type": "application/json", **headers} if body else headers
            r = c.request(method, path, content=body, headers=h)
            detail = r.json() if r.headers.get("content-type") == "application/json" else {}
            if r.status_code != want or "message" not in detail or "x-request-id" not in r.headers:
                wrong.append(f"{name}: {r.status_code} {r.text[:200]}")
        assert c.get("/v2/health/ready").status_code == 200  # still serving
    assert not wrong, "\n".join(wrong)


def test_without_its_secret_only_the_health_probes_answer(
        tab: tuple[str, torch.nn.Module]) -> None:
    url, _ = tab
    guarded = [("GET", "/v2"), ("GET", "/v2/models/tab"), ("GET", "/v2/models/tab/ready"),
               ("GET", "/admin/info"), ("POST", "/admin/swap"),
               ("POST", "/v1/models/tab:predict"), ("POST", "/v2/models/tab/infer"),
               ("POST", "/v1/models/tab/feedback"), ("GET", "/nowhere"),
               ("POST", "/admin/drain")]  # last: were it let through, the replica drains
    body = orjson.dumps({"instances": ROWS, "ref": "1"})
    with httpx.Client(base_url=url, timeout=10) as c:
        for secret in (None, "x" * 43, REPLICA_SECRET[:-1]):
            headers = {"content-type": "application/json"}
            if secret is not None:
                headers[REPLICA_SECRET_HEADER] = secret
            got = {p: c.request(m, p, content=body, headers=headers).status_code
                   for m, p in guarded}
            assert set(got.values()) == {401}, (secret, got)
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/metrics").status_code == 200  # counters: Prometheus has no secret
    assert http.post(f"{url}/v1/models/tab:predict", json={"instances": ROWS}).status_code \
        == 200  # and with it, everything works


def test_metadata_and_metrics(tab: tuple[str, torch.nn.Module]) -> None:
    url, _ = tab
    meta = http.get(f"{url}/v2/models/tab").json()
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 4]
    assert meta["parameters"]["feature_names"] == FEATURES
    info = http.get(f"{url}/admin/info").json()
    assert info["name"] == "front" and info["version"] == 1 and info["ready"] is True
    # The torch mlp runs in ONNX Runtime (the default backend), checked at load.
    assert info["runtime"] == {"framework": "torch", "backend": "onnxruntime"}
    for _ in range(3):
        http.post(f"{url}/v1/models/tab:predict", json={"instances": ROWS})
    text = http.get(f"{url}/metrics").text
    assert 'stratum_replica_request_duration_seconds_bucket{code="200",le="0.005",' \
           'route="/v1/models/{name}:predict"}' in text
    assert 'stratum_replica_requests_total{code="200",route="/v1/models/{name}:predict"}' in text
    assert "stratum_replica_batch_size_rows_bucket" in text
    assert "stratum_replica_batch_wait_seconds_count" in text
    assert "stratum_replica_forward_duration_seconds_count" in text
    assert "stratum_replica_queue_depth_rows 0.0" in text
    assert 'stratum_replica_model_version{model="tab"} 1.0' in text


# -- hot swap ---------------------------------------------------------------------------------
def _register_img(store: Store, seed: int, *, broken: bool = False) -> int:
    torch.manual_seed(seed)
    net = build_model("cnn", [1, 8, 8], 10)
    state = net.state_dict()
    if broken:  # registers fine, cannot load: a layer of the wrong size
        state["0.weight"] = torch.zeros(3, 1, 3, 3)
    spec = ModelSpec(architecture="cnn", input_shape=[1, 8, 8], classes=list(range(10)))
    return register_model(store.meta, store.artifacts, "img", spec, weights=state).version


def test_hot_swap_under_load_drops_nothing(home: tuple[Settings, Path]) -> None:
    settings, tmp = home
    store = Store.open(settings)
    _register_img(store, 1)
    with _replica(settings, "img@1", tmp / "img.log") as url:
        _register_img(store, 2)
        _register_img(store, 3, broken=True)
        # (sent at, status, header, body version): the order of appends from six threads
        # is not the order of answers, so each request carries when it was sent.
        results: list[tuple[float, int, str, int | None]] = []
        stop = threading.Event()
        sample = {"instances": [np.linspace(0, 1, 64).reshape(1, 8, 8).tolist()]}

        def load() -> None:
            with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        r = c.post("/v1/models/img:predict", json=sample)
                        v = r.json().get("model_version") if r.status_code == 200 else None
                        results.append((sent, r.status_code, r.headers["x-model-version"], v))
                    except httpx.HTTPError as exc:
                        results.append((sent, -1, repr(exc), None))

        workers = [threading.Thread(target=load) for _ in range(6)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as admin:
            broken = admin.post("/admin/swap", json={"ref": "3"})
            missing = admin.post("/admin/swap", json={"ref": "img@99"})
            asked = time.monotonic()
            swap = admin.post("/admin/swap", json={"ref": "2"})
            switched = time.monotonic()
            time.sleep(0.5)
            stop.set()
            for w in workers:
                w.join()
            info = admin.get("/admin/info").json()
            text = admin.get("/metrics").text
    swaps = AuditLog(store.meta).entries(action="swap", actor="supervisor", limit=3)[::-1]
    audited = [(e.target, e.source.startswith("127.0.0.1:"), e.outcome, e.detail.get("ref"),
                e.detail.get("before"), e.detail.get("after")) for e in swaps]
    store.close()
    assert audited == [("front", True, broken.status_code, "3", 1, None),  # by the secret's
                       ("front", True, 404, "img@99", 1, None),  # holder, with the outcome
                       ("front", True, 200, "2", 1, 2)]
    assert broken.status_code >= 400 and "v3" in broken.json()["message"], broken.text
    assert missing.status_code == 404, missing.text
    assert swap.status_code == 200 and swap.json() == {"name": "img", "version": 2,
                                                       "previous": 1}
    statuses = Counter(s for _, s, _, _ in results)
    assert statuses == Counter({200: len(results)}), statuses
    assert all(h == str(v) for _, _, h, v in results)  # header and body name the same version
    assert {v for t, _, _, v in results if t < asked} == {1}  # before the swap: old only
    assert {v for t, _, _, v in results if t > switched} == {2}  # after the switch: new only
    assert info["version"] == 2 and info["inflight"] == 0
    assert 'stratum_replica_swaps_total{outcome="ok"} 1.0' in text
    assert 'stratum_replica_swaps_total{outcome="failed"} 2.0' in text


def test_drain_stops_new_work(home: tuple[Settings, Path]) -> None:
    settings, tmp = home
    store = Store.open(settings)
    if not store.meta.model_versions("img"):
        _register_img(store, 1)
    store.close()
    with _replica(settings, "img@1", tmp / "drain.log") as url:
        sample = {"instances": [[0.0] * 64]}
        assert http.post(f"{url}/v1/models/img:predict", json=sample).status_code == 200
        d = http.post(f"{url}/admin/drain", timeout=30)
        assert d.json() == {"drained": True, "inflight": 0}
        assert http.get(f"{url}/v2/health/ready").status_code == 503
        r = http.post(f"{url}/v1/models/img:predict", json=sample)
        assert r.status_code == 503 and "draining" in r.json()["message"]
        assert http.get(f"{url}/v2/health/live").status_code == 200


# -- scikit-learn, and the Triton client unchanged ----------------------------------------------
@pytest.fixture(scope="module")
def iris(home: tuple[Settings, Path]) -> Iterator[tuple[str, object, np.ndarray]]:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    settings, tmp = home
    X, y = load_iris(return_X_y=True)
    est = LogisticRegression(max_iter=300).fit(X, y)
    spec = ModelSpec(framework="sklearn", architecture="logistic", input_shape=[4],
                     classes=["setosa", "versicolor", "virginica"], weights_file="model.skops")
    store = Store.open(settings)
    register_model(store.meta, store.artifacts, "iris", spec, weights_blob=sio.dumps(est))
    store.close()
    with _replica(settings, "iris@latest", tmp / "iris.log") as url:
        yield url, est, X[::15].astype(np.float32)


def test_sklearn_replica_equals_predict_proba(iris: tuple[str, object, np.ndarray]) -> None:
    url, est, X = iris
    r = http.post(f"{url}/v1/models/iris:predict", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    got = np.array([p["probabilities"] for p in r.json()["predictions"]])
    np.testing.assert_allclose(got, est.predict_proba(X), rtol=1e-5)  # type: ignore[attr-defined]
    assert r.json()["classes"] == ["setosa", "versicolor", "virginica"]


def _triton_round_trip(url: str, est: object, X: np.ndarray) -> None:
    import tritonclient.http as th  # the dev extra installs it: a missing one fails

    want = est.predict_proba(X)  # type: ignore[attr-defined]
    client = th.InferenceServerClient(url.removeprefix("http://"))
    # Straight to the replica the secret is needed; the gateway adds its own (and drops ours).
    assert client.is_server_live() and client.is_model_ready("iris", headers=AUTH)
    assert client.get_model_metadata("iris", headers=AUTH)["inputs"][0]["shape"] == [-1, 4]
    # binary in and out (the client's default), binary in with JSON out, plain JSON
    for binary_in, binary_out in ((True, True), (True, False), (False, False)):
        inp = th.InferInput("input", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary_in)
        outs = [th.InferRequestedOutput(n, binary_data=binary_out)
                for n in ("probabilities", "label")]
        # a copy: the client adds Inference-Header-Content-Length to the dict it is given
        res = client.infer("iris", [inp], outputs=outs, request_id="t-1", headers=dict(AUTH))
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, rtol=1e-5)
        labels = [v.decode() if isinstance(v, bytes) else v for v in res.as_numpy("label")]
        assert labels == [["setosa", "versicolor", "virginica"][i] for i in want.argmax(1)]
        assert res.get_response()["id"] == "t-1"
    client.close()


def test_triton_client_works_unchanged(iris: tuple[str, object, np.ndarray]) -> None:
    url, est, X = iris
    _triton_round_trip(url, est, X)


def test_triton_client_works_through_the_gateway(
    home: tuple[Settings, Path], iris: tuple[str, object, np.ndarray],
) -> None:
    # The gateway forwards bytes; the binary mode needs Inference-Header-Content-Length
    # carried both ways.
    settings, tmp = home
    url, est, X = iris
    with gateway(settings, [url], tmp / "gw-triton.log") as (gw, _):
        _triton_round_trip(gw, est, X)


def test_a_model_that_cannot_load_exits_with_the_reason(home: tuple[Settings, Path]) -> None:
    settings, _ = home
    proc = subprocess.run(
        [sys.executable, "-m", "stratum.serve", "--model", "ghost@3", "--port", str(free_port())],
        env={**os.environ, **settings.child_env(), REPLICA_SECRET_ENV: REPLICA_SECRET},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ghost@3 does not exist" in proc.stderr


def test_a_replica_without_a_secret_is_an_explicit_choice(home: tuple[Settings, Path]) -> None:
    settings, _ = home
    env = {k: v for k, v in os.environ.items() if k != REPLICA_SECRET_ENV}
    args = [sys.executable, "-m", "stratum.serve", "--model", "ghost@3", "--port",
            str(free_port())]
    refused = subprocess.run(args, env={**env, **settings.child_env()}, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "no replica secret" in refused.stderr
    assert REPLICA_SECRET_ENV in refused.stderr and "--insecure" in refused.stderr
    # --insecure goes on (here to the missing model) after a loud warning
    open_ = subprocess.run([*args, "--insecure"], env={**env, **settings.child_env()},
                           capture_output=True, text=True, timeout=60)
    assert open_.returncode == 2 and "ghost@3 does not exist" in open_.stderr
    assert "WARNING" in open_.stderr and "INSECURE" in open_.stderr
