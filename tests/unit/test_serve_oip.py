"""The Open Inference Protocol v2 codec: JSON (flat and nested), the binary extension,
and a 400 naming the field for each malformation."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stratum.errors import BadRequestError, SignatureError
from stratum.serve import oip


def _req(**tensor: object) -> bytes:
    t = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}
    return orjson.dumps({"id": "42", "inputs": [{**t, **tensor}]})


def test_flat_and_nested_data_decode_to_the_same_tensor() -> None:
    flat = oip.decode_request(_req())
    nested = oip.decode_request(_req(data=[[1, 2, 3], [4, 5, 6]]))
    assert flat.id == "42" and flat.outputs is None
    for r in (flat, nested):
        t = r.inputs[0]
        assert (t.name, t.datatype, t.shape) == ("x", "FP32", [2, 3])
        assert t.array.dtype == np.float32
        np.testing.assert_array_equal(t.array, [[1, 2, 3], [4, 5, 6]])


def test_binary_extension_round_trip() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3],
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    req = oip.decode_request(header + x.tobytes(), len(header))
    np.testing.assert_array_equal(req.inputs[0].array, x)
    assert req.outputs == ["y"] and req.binary_outputs == {"y"}
    y = oip.Tensor("y", "FP32", [2, 3], x * 2)
    body, hlen = oip.encode_response("m", 3, "7", [y], req.binary_outputs)
    assert hlen is not None
    head = orjson.loads(body[:hlen])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    np.testing.assert_array_equal(np.frombuffer(body[hlen:], np.float32).reshape(2, 3), x * 2)


def test_json_response_is_flat_row_major() -> None:
    y = oip.Tensor("p", "FP32", [2, 2], np.array([[0.25, 0.75], [1.0, 0.0]], np.float32))
    lab = oip.Tensor("label", "BYTES", [2], np.array(["cat", "dog"], dtype=object))
    body, hlen = oip.encode_response("m", 3, None, [y, lab])
    doc = orjson.loads(body)
    assert hlen is None and doc["model_version"] == "3" and "id" not in doc
    assert doc["outputs"][0] == {"name": "p", "datatype": "FP32", "shape": [2, 2],
                                 "data": [0.25, 0.75, 1.0, 0.0]}
    assert doc["outputs"][1]["data"] == ["cat", "dog"]


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"{not json", BadRequestError, ["not valid JSON"]),
        (b"[1, 2]", BadRequestError, ["JSON object"]),
        (b'{"inputs": []}', BadRequestError, ["inputs"]),
        (orjson.dumps({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}),
         BadRequestError, ["name"]),
        (_req(shape=[2, 2]), BadRequestError, ["needs 4 values", "6"]),
        (_req(shape=[2, -3]), BadRequestError, ["non-negative"]),
        (_req(datatype="FP128"), BadRequestError, ["unknown datatype"]),
        (_req(datatype="BYTES"), SignatureError, ["BYTES"]),
        (_req(data=["a", "b", "c", "d", "e", "f"]), SignatureError, ["str"]),
        (_req(data=[[1, 2, 3], [4, 5]]), SignatureError, ["ragged"]),
        (_req(data=None), BadRequestError, ["list"]),
        (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}),
         BadRequestError, ["'data' is missing"]),
        (orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                   "data": [1]}], "outputs": "all"}),
         BadRequestError, ["outputs"]),
    ],
)
def test_malformed_requests_name_the_problem(body: bytes, error: type[Exception],
                                             words: list[str]) -> None:
    with pytest.raises(error) as info:
        oip.decode_request(body)
    for w in words:
        assert w in str(info.value)


def test_binary_sizes_must_add_up() -> None:
    header = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                       "parameters": {"binary_data_size": 8}}]})
    with pytest.raises(BadRequestError, match="ends before"):
        oip.decode_request(header + b"\0" * 4, len(header))
    with pytest.raises(BadRequestError, match="not claimed"):
        oip.decode_request(header + b"\0" * 12, len(header))
    with pytest.raises(BadRequestError, match="body has"):
        oip.decode_request(header, len(header) + 5)
