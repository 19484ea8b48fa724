"""The replica's data-path routes: inference (OIP v2 infer and the plain predict route),
health and metadata, ``/metrics`` and feedback.

A handler is a function of the ``Replica`` and the request; the replica binds each one to
itself as a method (``app.py``), so they read its state directly. An inference takes the
current ``ModelSlot`` once, checks its inputs against that version's signature, awaits its
rows from the version's batcher and answers from that same version; what it served is
captured for the feedback join unless the gateway marked the request as shadow traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from stratum.asgi import Request, Response
from stratum.errors import (
    BadRequestError,
    NotReadyError,
    UnknownModelError,
    UnsupportedMediaTypeError,
)
from stratum.serve.feedback import parse_feedback
from stratum.serve.oip import (
    HEADER_LENGTH,
    batch_from_tensors,
    binary_header_length,
    decode_request,
    encode_response,
    instances_of,
    loads_object,
    metadata_response,
    output_tensors,
)
from stratum.serve.traces import traced_submit

if TYPE_CHECKING:
    from stratum.serve.app import Replica
    from stratum.serve.swap import ModelSlot

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_HEADER_LENGTH = HEADER_LENGTH.encode()


# -- inference ----------------------------------------------------------------------------
async def predict(replica: Replica, req: Request) -> Response:
    _check_name(replica, req)
    require_json(req)
    doc = loads_object(req.body)
    if "instances" not in doc:
        raise BadRequestError('field \'instances\' is missing; send {"instances": [...]}')
    slot = _acquire(replica)
    try:
        x = slot.signature.from_instances(doc["instances"])
        y = await (slot.batcher.submit(x) if replica.tracer is None
                   else traced_submit(replica.tracer, slot.batcher, x))
    finally:
        _release(replica, slot)
    if replica.capture is not None and "x-stratum-shadow" not in req.headers:
        replica.capture.add(req.request_id, slot.version, doc["instances"], served(slot, y))
        if replica.tracer is not None:
            replica.intake.traced(req.request_id)
    out: dict[str, Any] = {"predictions": plain_predictions(slot, y),
                           "model_version": slot.version}
    if slot.classifier:
        out["classes"] = slot.spec.classes
    return Response(200, orjson.dumps(out, option=_NUMPY), version=slot.version)


async def infer(replica: Replica, req: Request) -> Response:
    _check_name(replica, req)
    hlen = binary_header_length(req.headers)
    if hlen is None:
        require_json(req)
    request = decode_request(req.body, hlen)
    slot = _acquire(replica)
    try:
        _check_version(req, slot)
        x = batch_from_tensors(slot, request.inputs)
        y = await (slot.batcher.submit(x) if replica.tracer is None
                   else traced_submit(replica.tracer, slot.batcher, x))
    finally:
        _release(replica, slot)
    if replica.capture is not None and "x-stratum-shadow" not in req.headers:
        replica.capture.add(req.request_id, slot.version, instances_of(request.inputs),
                            served(slot, y))
        if replica.tracer is not None:
            replica.intake.traced(req.request_id)
    body, header_len = encode_response(
        req.params["name"], slot.version, request.id, output_tensors(slot, y, request.outputs),
        request.binary_outputs)
    if header_len is None:
        return Response(200, body, version=slot.version)
    return Response(200, body, content_type=b"application/octet-stream", version=slot.version,
                    headers=[(_HEADER_LENGTH, str(header_len).encode())])


def _acquire(replica: Replica) -> ModelSlot:
    slot = replica.swapper.current
    if slot is None or replica.draining:
        raise NotReadyError("this replica is draining" if replica.draining else
                            "no model version is loaded yet", hint="retry on another replica")
    slot.inflight += 1
    replica.inflight += 1
    return slot


def _release(replica: Replica, slot: ModelSlot) -> None:
    slot.release()
    replica.inflight -= 1


def served(slot: ModelSlot, y: np.ndarray) -> dict[str, Any]:
    """What the request log keeps of a prediction: the classes, or the values."""
    if slot.classifier:
        return {"classes": slot.class_labels[y.argmax(axis=1)].tolist()}
    return {"values": y.reshape(-1).tolist()}


def plain_predictions(slot: ModelSlot, y: np.ndarray) -> list[Any]:
    if not slot.classifier:
        return y.tolist()
    labels = slot.class_labels[y.argmax(axis=1)].tolist()
    return [{"class": c, "probabilities": row} for c, row in zip(labels, y, strict=True)]


# -- health, metadata, metrics --------------------------------------------------------------
async def live(replica: Replica, req: Request) -> Response:
    return Response(200, b'{"live":true}')


async def ready(replica: Replica, req: Request) -> Response:
    return Response(200, b'{"ready":true}') if replica.ready else \
        Response(503, b'{"ready":false}')


async def model_ready(replica: Replica, req: Request) -> Response:
    slot = _slot_for(replica, req)
    return Response(200 if replica.ready else 503,
                    orjson.dumps({"name": slot.name, "ready": replica.ready}))


async def server_metadata(replica: Replica, req: Request) -> Response:
    return Response(200, orjson.dumps({"name": "stratum", "version": "0.1.0",
                                       "extensions": ["binary_tensor_data"]}))


async def model_metadata(replica: Replica, req: Request) -> Response:
    slot = _slot_for(replica, req)
    return Response(200, orjson.dumps(metadata_response(slot)), version=slot.version)


async def metrics(replica: Replica, req: Request) -> Response:
    slot = replica.swapper.current
    depth = slot.batcher.queue_depth if slot else 0
    return Response(200, replica.metrics.render(depth, replica.inflight),
                    content_type=replica.metrics.content_type.encode())


# -- feedback -----------------------------------------------------------------------------
async def feedback(replica: Replica, req: Request) -> Response:
    """``{"request_id", "label"}`` or a list → the feedback queue (deduplicated)."""
    _check_name(replica, req)
    require_json(req)
    items = parse_feedback(req.body)
    slot = replica.swapper.current
    if slot is None:
        raise NotReadyError("no model version is loaded yet", hint="retry")
    result = await replica.intake.feedback(items, slot.spec.classes if slot.classifier
                                           else None)
    replica.metrics.feedback.labels("accepted").inc(result.accepted)
    replica.metrics.feedback.labels("duplicate").inc(result.duplicates)
    return Response(200, orjson.dumps(result.to_dict()))


# -- request checks -----------------------------------------------------------------------
def _check_name(replica: Replica, req: Request) -> None:
    name = req.params["name"]
    if name not in replica.names:
        raise UnknownModelError(f"model {name!r} is not served here",
                                hint=f"this replica serves {replica.model_name!r}")


def _slot_for(replica: Replica, req: Request) -> ModelSlot:
    _check_name(replica, req)
    slot = replica.swapper.current
    if slot is None:
        raise NotReadyError("no model version is loaded yet")
    _check_version(req, slot)
    return slot


def _check_version(req: Request, slot: ModelSlot) -> None:
    v = req.params.get("version")
    if v is not None and v.lstrip("v") != str(slot.version):
        raise UnknownModelError(f"model {slot.name} version {v} is not loaded here",
                                hint=f"this replica serves version {slot.version}")


def require_json(req: Request) -> None:
    ctype = req.headers.get("content-type")
    # No content type is taken as JSON: the Triton client sends none.
    if ctype is not None and not ctype.startswith("application/json"):
        raise UnsupportedMediaTypeError(f"content type {ctype!r} is not accepted",
                                        hint="send application/json")
