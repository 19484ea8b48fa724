"""What a real replica refuses and what it keeps: non-finite inputs and outputs are a 422
on every inference form and never a prediction; the PII column is masked (keyed) in the
request log whatever form the inputs came in; a replica spawned from a folder full of stray
modules imports none of them."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch

from stratum.config import Settings, load_settings
from stratum.models import build_model
from stratum.security.masking import mask_value
from stratum.store import ModelSpec, Store, register_model
from stratum.store.requests import RequestLog
from tests.integration.gateway_fixtures import REPLICA_AUTH, REPLICA_SECRET, replica
from tests.services import free_port, wait_http

pytestmark = pytest.mark.integration

FEATURES = ["age", "ssn", "income", "zip"]
KEY = b"0123456789abcdef0123456789abcdef"
GOOD = [1.0, 2.0, 3.0, 4.0]
# Every route but health needs the deployment secret the fixtures start replicas with.
http = httpx.Client(headers=REPLICA_AUTH, timeout=30)
BLOWS_UP = [1e9, -1e9, 1e9, -1e9]  # finite in FP32; the 1e30 first-layer weights overflow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    tmp = tmp_path_factory.mktemp("checks")
    settings = load_settings(home=tmp / "home", log_level="WARNING",
                             serve={"max_wait_ms": 1.0},
                             online={"log_pii_columns": ["ssn"], "log_pii_key_file": "pii.key",
                                     "capture_flush_ms": 5.0})
    torch.manual_seed(0)
    net = build_model("mlp", [4], 3, hidden=[8])
    with torch.no_grad():  # huge weights: inputs of 1e9 give infinite hidden units
        net[1].weight.mul_(1e30)
    spec = ModelSpec(architecture="mlp", params={"hidden": [8]}, input_shape=[4],
                     feature_names=FEATURES, classes=["a", "b", "c"])
    store = Store.open(settings)
    register_model(store.meta, store.artifacts, "wide", spec, weights=net.state_dict())
    store.close()
    (settings.home / "pii.key").write_bytes(KEY)
    (settings.home / "pii.key").chmod(0o600)
    with replica(settings, "wide@1", tmp / "wide.log") as url:
        yield url, settings


def _binary_infer(x: np.ndarray, binary_output: bool) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": binary_output}})
    return head + x.astype("<f4").tobytes(), {
        "inference-header-content-length": str(len(head)),
        "content-type": "application/octet-stream"}


def _requests(kind: str, rows: list[list[float]]) -> tuple[str, bytes, dict[str, str]]:
    """One inference request in each form the replica takes: (path, body, headers)."""
    if kind == "predict":
        return "/v1/models/wide:predict", orjson.dumps({"instances": rows}), {}
    if kind == "infer json":
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 4],
                           "data": rows}]}
        return "/v2/models/wide/infer", orjson.dumps(doc), {}
    body, headers = _binary_infer(np.array(rows, np.float32), kind == "infer binary out")
    return "/v2/models/wide/infer", body, headers


KINDS = ["predict", "infer json", "infer binary in", "infer binary out"]


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_outputs_are_a_422_never_a_prediction(
    served: tuple[str, Settings], kind: str,
) -> None:
    url, settings = served
    path, body, headers = _requests(kind, [GOOD, BLOWS_UP, BLOWS_UP])
    rid = f"nonfinite-{kind.replace(' ', '-')}"
    r = http.post(url + path, content=body,
                   headers={"content-type": "application/json", **headers, "x-request-id": rid,
                            **REPLICA_AUTH})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "NonFiniteOutputError"
    assert "non-finite outputs for instance(s) [1, 2]" in r.json()["message"]
    path, body, headers = _requests(kind, [GOOD])
    ok = http.post(url + path, content=body,
                    headers={"content-type": "application/json", **headers, **REPLICA_AUTH})
    assert ok.status_code == 200, ok.text  # the replica goes on serving
    store = Store.open(settings)
    try:  # nothing that was refused reaches the request log
        assert RequestLog.from_settings(settings, store.meta).get(rid) is None
    finally:
        store.close()


@pytest.mark.parametrize("kind", KINDS[:3])
def test_inputs_beyond_fp32_are_a_422_naming_instance_and_feature(
    served: tuple[str, Settings], kind: str,
) -> None:
    url, _ = served
    if kind == "infer binary in":  # binary FP32 carries NaN and infinity as they are
        path, body, headers = _requests(kind, [GOOD, [np.nan, 0, 0, 0], [0, 0, 0, np.inf]])
        words = ["instance(s) [1, 2]", "feature(s) ['age', 'zip']"]
    else:  # 1e40 parses as a float64 and overflows the cast to FP32
        path, body, headers = _requests(kind, [GOOD, [1.0, 1e40, 1.0, 1.0]])
        words = ["instance(s) [1]", "feature(s) ['ssn']", "FP32"]
    r = http.post(url + path, content=body,
                   headers={"content-type": "application/json", **headers, **REPLICA_AUTH})
    assert r.status_code == 422 and r.json()["error"] == "SignatureError", r.text
    for w in words:
        assert w in r.json()["message"]



# -- the request log: the PII column masked in every input form ------------------------------
PERSON = [41.0, 1234567.0, 5.5, 9.0]  # exact in FP32 too


def _pii_forms() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    per_feature = [{"name": f, "datatype": "FP32", "shape": [1], "data": [v]}
                   for f, v in zip(FEATURES, PERSON, strict=True)]
    head = orjson.dumps({"inputs": [{**{k: t[k] for k in ("name", "datatype", "shape")},
                                     "parameters": {"binary_data_size": 4}}
                                    for t in per_feature]})
    binary = head + np.array(PERSON, "<f4").tobytes()
    return {
        "v1 rows": _requests("predict", [PERSON]),
        "v1 objects": ("/v1/models/wide:predict", orjson.dumps(
            {"instances": [dict(zip(FEATURES, PERSON, strict=True))]}), {}),
        "oip json, one tensor": _requests("infer json", [PERSON]),
        "oip json, tensor per feature": ("/v2/models/wide/infer",
                                         orjson.dumps({"inputs": per_feature}), {}),
        "oip binary, one tensor": _requests("infer binary in", [PERSON]),
        "oip binary, tensor per feature": ("/v2/models/wide/infer", binary, {
            "inference-header-content-length": str(len(head))}),
    }


def test_the_pii_column_is_masked_in_the_log_for_every_input_form(
    served: tuple[str, Settings],
) -> None:
    url, settings = served
    ids = {}
    for i, (form, (path, body, headers)) in enumerate(_pii_forms().items()):
        ids[form] = f"pii-{i}"
        r = http.post(url + path, content=body, headers={
            "content-type": "application/json", **headers, "x-request-id": ids[form]})
        assert r.status_code == 200, (form, r.text)
    store = Store.open(settings)
    try:
        log = RequestLog.from_settings(settings, store.meta)
        deadline = time.monotonic() + 10
        while len(got := log.get_many(list(ids.values()))) < len(ids):
            assert time.monotonic() < deadline, f"not logged: {set(ids.values()) - set(got)}"
            time.sleep(0.05)
    finally:
        store.close()
    masked = mask_value(1234567, KEY)  # keyed: the same value masks alike in every form
    for form, rid in ids.items():
        (row,) = got[rid].instances
        values = list(row.values()) if isinstance(row, dict) else row
        assert values == [41, masked, 5.5, 9], (form, got[rid].inputs)
        assert "1234567" not in orjson.dumps(got[rid].inputs).decode()


# -- processes start clean ---------------------------------------------------------------------
def test_a_spawned_replica_imports_nothing_from_the_operators_folder(
    served: tuple[str, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`triton.py` and modules the replica imports (orjson, numpy) sit in the folder the
    supervisor was started from; each would kill the replica if it were imported."""
    from stratum.control.procs import spawn

    _, settings = served
    for name in ("triton", "orjson", "numpy", "uvicorn"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('stray {name}.py imported')\n")
    monkeypatch.chdir(tmp_path)
    port = free_port()
    log = tmp_path / "logs" / "replica.log"
    proc = spawn("stratum.serve", ["--model", "wide@1", "--port", str(port)],
                 {**settings.child_env(), "STRATUM_REPLICA_SECRET": REPLICA_SECRET}, log)
    try:
        assert os.readlink(f"/proc/{proc.pid}/cwd") == "/"
        try:
            wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 90)
        except TimeoutError as exc:
            raise AssertionError(log.read_text()[-2000:]) from exc
        path, body, _ = _requests("predict", [GOOD])
        r = http.post(f"http://127.0.0.1:{port}{path}", content=body,
                      headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert "stray" not in log.read_text()
    finally:
        assert proc.popen is not None
        proc.terminate()
        try:
            proc.popen.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.popen.wait(5)
