"""Open Inference Protocol v2 (KServe v2 / Triton) tensors over JSON.

A request is ``{"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data"}],
"outputs"?: [{"name", "parameters"?}]}``; ``data`` may be flat (row-major) or nested. The
binary tensor data extension that the Triton client uses by default is supported too:
the JSON header is the first ``Inference-Header-Content-Length`` bytes of the body and
each input with ``parameters.binary_data_size`` takes that many raw little-endian bytes
from the rest, in order; outputs asked for with ``binary_data: true`` come back the same
way.

The last section maps tensors onto a loaded version: inputs to its batch, its outputs to
tensors, its signature to the model metadata response.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from stratum.data.signature import to_numeric
from stratum.errors import BadRequestError, SignatureError

if TYPE_CHECKING:
    from stratum.serve.swap import ModelSlot

# OIP datatype ↔ NumPy dtype (BYTES is variable-length; no model here takes it).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NUMERIC = frozenset(DTYPES) - {"BOOL"}
HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[str] | None = None  # requested names; None → all
    binary_outputs: set[str] = field(default_factory=set)


def datatype_of(arr: np.ndarray) -> str:
    for name, dt in DTYPES.items():
        if arr.dtype == dt:
            return name
    return "BYTES"


# -- requests -----------------------------------------------------------------------------
def binary_header_length(headers: Mapping[str, str]) -> int | None:
    """The binary extension's JSON header length, or None when the body is all JSON."""
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequestError(f"{HEADER_LENGTH} must be a number of bytes, got {raw!r}")
    return int(raw)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Parse an infer request; any malformation is a ``BadRequestError`` naming the field."""
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequestError(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        body, binary = body[:header_length], body[header_length:]
    doc = loads_object(body)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("field 'inputs' is missing or empty; it must be a list of tensors")
    inputs, offset = [], 0
    for i, t in enumerate(raw_inputs):
        tensor, used = _decode_tensor(t, f"inputs[{i}]", binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data are not claimed "
                              "by any input's binary_data_size")
    rid = doc.get("id")
    req = InferRequest(id=str(rid) if rid is not None else None, inputs=inputs)
    _decode_outputs(doc, req)
    return req


def loads_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequestError(f"the body must be a JSON object, not {type(doc).__name__}")
    return doc


def _decode_tensor(t: Any, where: str, binary: bytes, offset: int) -> tuple[Tensor, int]:
    if not isinstance(t, dict):
        raise BadRequestError(f"{where} must be an object with name, datatype, shape, data")
    name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if not isinstance(name, str):
        raise BadRequestError(f"{where}.name is missing or not a string")
    where = f"input {name!r}"
    if not isinstance(datatype, str):
        raise BadRequestError(f"{where}: datatype is missing or not a string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequestError(f"{where}: shape must be a list of non-negative integers")
    if datatype not in DTYPES:
        if datatype == "BYTES":
            raise SignatureError(f"{where}: datatype BYTES is not accepted; send FP32 numbers")
        raise BadRequestError(f"{where}: unknown datatype {datatype!r}; one of {sorted(DTYPES)}")
    dtype = DTYPES[datatype]
    size = math.prod(shape)
    params = t.get("parameters") or {}
    nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
    if nbytes is not None:
        if not isinstance(nbytes, int) or nbytes != size * dtype.itemsize:
            raise BadRequestError(f"{where}: binary_data_size {nbytes} != "
                                  f"{size} elements x {dtype.itemsize} bytes")
        if offset + nbytes > len(binary):
            raise BadRequestError(f"{where}: the body ends before its {nbytes} binary bytes")
        arr = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=size, offset=offset)
        return Tensor(name, datatype, shape, arr.reshape(shape)), nbytes
    if "data" not in t:
        raise BadRequestError(f"{where}: field 'data' is missing")
    arr = _array(t["data"], dtype, where)
    if arr.size != size:
        raise BadRequestError(f"{where}: shape {shape} needs {size} values, data has {arr.size}")
    return Tensor(name, datatype, shape, arr.reshape(shape)), 0


def _array(data: Any, dtype: np.dtype[Any], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequestError(f"{where}: data must be a (flat or nested) list")
    if dtype.kind == "b":
        try:
            return np.asarray(data, dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{where}: data is not a list of booleans") from exc
    return to_numeric(data, f"{where} data").astype(dtype, copy=False)


def _decode_outputs(doc: dict[str, Any], req: InferRequest) -> None:
    params = doc.get("parameters") or {}
    all_binary = isinstance(params, dict) and params.get("binary_data_output") is True
    outs = doc.get("outputs")
    if outs is None:
        if all_binary:
            req.binary_outputs = {"*"}
        return
    if not isinstance(outs, list):
        raise BadRequestError("field 'outputs' must be a list of {name, parameters}")
    req.outputs = []
    for i, o in enumerate(outs):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequestError(f"outputs[{i}] must be an object with a string 'name'")
        req.outputs.append(o["name"])
        p = o.get("parameters") or {}
        if all_binary or (isinstance(p, dict) and p.get("binary_data") is True):
            req.binary_outputs.add(o["name"])


# -- responses ----------------------------------------------------------------------------
def encode_response(
    model_name: str, model_version: int, request_id: str | None, outputs: list[Tensor],
    binary_outputs: set[str] | frozenset[str] = frozenset(),
) -> tuple[bytes, int | None]:
    """Encode outputs; returns ``(body, header_length)`` where ``header_length`` is set when
    the body carries binary tensors (send it as Inference-Header-Content-Length)."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        doc["id"] = request_id
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in outputs:
        item: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        text = t.array.dtype.kind in "OUS"
        if "*" in binary_outputs or t.name in binary_outputs:
            raw = _bytes_tensor(t.array) if text else np.ascontiguousarray(
                t.array, dtype=t.array.dtype.newbyteorder("<")).tobytes()
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = t.array.reshape(-1).tolist() if text else t.array.reshape(-1)
        items.append(item)
    doc["outputs"] = items
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _bytes_tensor(arr: np.ndarray) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length, then the bytes."""
    out = bytearray()
    for v in arr.reshape(-1).tolist():
        b = v if isinstance(v, bytes) else str(v).encode()
        out += len(b).to_bytes(4, "little") + b
    return bytes(out)


# -- tensors ↔ a loaded version (pure functions of a slot and arrays) ----------------------
def batch_from_tensors(slot: ModelSlot, inputs: list[Tensor]) -> np.ndarray:
    """One input → a batch tensor; several inputs → one column per feature name."""
    if len(inputs) == 1:
        t = inputs[0]
        if t.datatype not in NUMERIC:
            raise SignatureError(f"input {t.name!r} has datatype {t.datatype}; send FP32")
        return slot.signature.from_array(t.array, f"input {t.name!r}")
    columns: dict[str, np.ndarray] = {}
    for t in inputs:
        if t.array.ndim not in (1, 2) or (t.array.ndim == 2 and t.array.shape[1] != 1):
            raise SignatureError(f"input {t.name!r}: one input per feature must have shape "
                                 f"[n] or [n, 1], got {t.shape}")
        columns[t.name] = t.array.reshape(-1)
    return slot.signature.from_columns(columns)


def output_tensors(slot: ModelSlot, y: np.ndarray, wanted: list[str] | None) -> list[Tensor]:
    """The model's answer as the output tensors asked for (all of them when ``wanted`` is
    None); a name the model does not have is a 400."""
    n = len(y)
    if slot.classifier:
        labels = slot.class_labels[y.argmax(axis=1)]
        avail = {
            "probabilities": Tensor("probabilities", "FP32", [n, y.shape[1]], y),
            "label": Tensor("label", datatype_of(labels), [n], labels),
        }
    else:
        avail = {"prediction": Tensor("prediction", "FP32", [n], y)}
    if wanted is None:
        return list(avail.values())
    unknown = [w for w in wanted if w not in avail]
    if unknown:
        raise BadRequestError(f"unknown output(s) {unknown}; this model has {sorted(avail)}")
    return [avail[w] for w in wanted]


def instances_of(inputs: list[Tensor]) -> Any:
    """Tensors as the plain route's instances: the array itself (serialised by orjson when
    the capture is written, off the request path), or one object per row."""
    if len(inputs) == 1:
        return np.ascontiguousarray(inputs[0].array)
    columns = {t.name: t.array.reshape(-1).tolist() for t in inputs}
    n = min(len(c) for c in columns.values())
    return [{k: c[i] for k, c in columns.items()} for i in range(n)]


def metadata_response(slot: ModelSlot) -> dict[str, Any]:
    """The model metadata response (``GET /v2/models/{name}``) of the loaded version."""
    sig = slot.signature
    outputs: list[dict[str, Any]]
    if slot.classifier:
        k = len(slot.spec.classes or [])
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                   {"name": "label", "datatype": datatype_of(slot.class_labels),
                    "shape": [-1]}]
    else:
        outputs = [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    meta: dict[str, Any] = {
        "name": slot.name, "versions": [str(slot.version)],
        "platform": f"stratum_{slot.spec.framework}",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *sig.canonical_raw]}],
        "outputs": outputs,
    }
    if sig.feature_names is not None:
        meta["parameters"] = {"feature_names": list(sig.feature_names)}
    return meta
