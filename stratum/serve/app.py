"""The replica's ASGI app: OIP v2 + the plain predict route + admin + /metrics.

``Replica`` serves one model (one version at a time, hot-swappable). Each request takes
the current ``ModelSlot`` once, checks its inputs against that version's signature,
awaits its rows from the version's batcher and answers with ``x-model-version`` and
``x-request-id``. Every ``StratumError`` becomes its status with ``to_dict()`` as JSON;
bad input is always a 4xx.

Served inputs are captured for the feedback join (sampled, PII-masked, written to the
request log off the hot path); ``POST /v1/models/{name}/feedback`` checks feedback against
that log and puts it on the durable queue for the online learner.
Other work can add routes with ``replica.add_route(method, template, handler)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson

from stratum.asgi import JSON, Handler, Request, Response, Router, read_body
from stratum.config import Settings
from stratum.errors import (
    BadRequestError,
    NotFoundError,
    NotReadyError,
    SignatureError,
    StratumError,
    UnknownModelError,
    UnsupportedMediaTypeError,
)
from stratum.queue import Queue, feedback_stream, open_queue
from stratum.serve import oip
from stratum.serve.capture import InputCapture
from stratum.serve.feedback import FeedbackIntake, parse_feedback
from stratum.serve.metrics import ReplicaMetrics
from stratum.serve.swap import ModelSlot, Swapper
from stratum.store import Store
from stratum.store.requests import RequestLog

log = logging.getLogger(__name__)

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_ID_MAX = 128


class Replica:
    """ASGI app serving ``model_name``; ``deployment`` is accepted as an alias in paths."""

    def __init__(self, settings: Settings, store: Store, model_name: str,
                 deployment: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.model_name = model_name
        self.names = {model_name, deployment or model_name}
        self.deployment = deployment or model_name
        self.metrics = ReplicaMetrics(model_name)
        self.executor = ThreadPoolExecutor(1, "forward", initializer=_init_forward_thread,
                                           initargs=(settings.serve.runtime_threads,))
        self.swapper = Swapper(store, settings, self.executor, self.metrics, model_name)
        self.draining = False
        self.inflight = 0
        self._limit = settings.serve.max_body_bytes
        self._pending_slot: ModelSlot | None = None
        self.request_log = RequestLog.from_settings(settings, store.meta)
        self.capture = (InputCapture(self.request_log, model_name)
                        if settings.online.log_sample_rate > 0 else None)
        self._flush_s = settings.online.capture_flush_ms / 1000
        self._queue: Queue | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.router = Router()
        self._add_routes()

    # -- lifecycle ------------------------------------------------------------------------
    def load(self, ref: str | None) -> None:
        """Load the first version (blocking, before the server starts)."""
        self._pending_slot = self.swapper.load(ref)

    @property
    def ready(self) -> bool:
        return self.swapper.current is not None and not self.draining

    async def startup(self) -> None:
        if self._pending_slot is not None:
            if self.capture is not None:
                self.capture.feature_names = self._pending_slot.spec.feature_names
            self.swapper.install(self._pending_slot)
            self._pending_slot = None
        if self.capture is not None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def shutdown(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        await self.swapper.close()
        self.executor.shutdown(wait=True)
        if self.capture is not None:
            await asyncio.to_thread(self.capture.flush)  # nothing served goes unlogged
        if self._queue is not None:
            self._queue.close()

    async def _flush_loop(self) -> None:
        assert self.capture is not None
        while True:
            await asyncio.sleep(self._flush_s)
            if self.capture.buffered:
                try:
                    await asyncio.to_thread(self.capture.flush)
                except Exception:  # a locked store: keep the rows, try again next tick
                    log.exception("could not write %d captured requests",
                                  self.capture.buffered)

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        """Register an extra route; ``handler(Request) -> Response`` may raise StratumError."""
        self.router.add(method, template, handler)

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id")
        if not rid or len(rid) > _ID_MAX:
            rid = uuid.uuid4().hex
        method, path = scope["method"], scope["path"]
        label = "unmatched"
        try:
            found = self.router.match(method, path)
            if found is None:
                raise NotFoundError(f"no route {method} {path}",
                                    hint=f"this replica serves /v2/models/{self.model_name}")
            route, params = found
            label = route.template
            body = (await read_body(receive, self._limit, headers.get("content-length"))
                    if route.reads_body else b"")
            resp = await route.handler(Request(method, path, params, headers, body, rid))
        except StratumError as exc:
            resp = Response(exc.http_status, orjson.dumps(exc.to_dict()))
        except Exception:  # a bug, not bad input: log it, answer 500
            log.exception("unhandled error on %s %s (request %s)", method, path, rid)
            resp = Response(500, b'{"error":"InternalError","message":"see the replica log"}')
        version = resp.version
        if version is None and self.swapper.current is not None:
            version = self.swapper.current.version
        out_headers = [
            (b"content-type", resp.content_type),
            (b"content-length", str(len(resp.body)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
            (b"x-model-version", str(version).encode()),
            *resp.headers,
        ]
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": resp.body})
        self.metrics.observe(label, resp.status, time.perf_counter() - start)

    # -- routes ---------------------------------------------------------------------------
    def _add_routes(self) -> None:
        add = self.router.add
        # Hot routes first: a cold lookup tries templates in order.
        add("POST", "/v2/models/{name}/infer", self._infer)
        add("POST", "/v1/models/{name}:predict", self._predict)
        add("POST", "/v2/models/{name}/versions/{version}/infer", self._infer)
        add("GET", "/v2/health/live", self._live)
        add("GET", "/v2/health/ready", self._ready)
        add("GET", "/v2", self._server_metadata)
        add("GET", "/v2/models/{name}", self._model_metadata)
        add("GET", "/v2/models/{name}/versions/{version}", self._model_metadata)
        add("GET", "/v2/models/{name}/ready", self._model_ready)
        add("GET", "/v2/models/{name}/versions/{version}/ready", self._model_ready)
        add("GET", "/metrics", self._metrics)
        add("GET", "/admin/info", self._info)
        add("POST", "/admin/swap", self._swap)
        add("POST", "/admin/drain", self._drain)
        add("POST", "/v1/models/{name}/feedback", self._feedback)

    async def _live(self, req: Request) -> Response:
        return Response(200, b'{"live":true}')

    async def _ready(self, req: Request) -> Response:
        return Response(200, b'{"ready":true}') if self.ready else \
            Response(503, b'{"ready":false}')

    async def _model_ready(self, req: Request) -> Response:
        slot = self._slot_for(req)
        return Response(200 if self.ready else 503,
                        orjson.dumps({"name": slot.name, "ready": self.ready}))

    async def _server_metadata(self, req: Request) -> Response:
        return Response(200, orjson.dumps({"name": "stratum", "version": "0.1.0",
                                           "extensions": ["binary_tensor_data"]}))

    async def _model_metadata(self, req: Request) -> Response:
        slot = self._slot_for(req)
        return Response(200, orjson.dumps(model_metadata(slot)), version=slot.version)

    async def _metrics(self, req: Request) -> Response:
        slot = self.swapper.current
        depth = slot.batcher.queue_depth if slot else 0
        return Response(200, self.metrics.render(depth, self.inflight),
                        content_type=self.metrics.content_type.encode())

    async def _info(self, req: Request) -> Response:
        slot = self.swapper.current
        return Response(200, orjson.dumps({
            "name": self.deployment, "model": self.model_name,
            "version": slot.version if slot else None, "pid": os.getpid(),
            "inflight": self.inflight, "ready": self.ready, "draining": self.draining,
            "queue_depth": slot.batcher.queue_depth if slot else 0,
            "runtime": runtime_info(slot.runtime) if slot else None,
        }))

    async def _swap(self, req: Request) -> Response:
        _require_json(req)
        doc = oip.loads_object(req.body)
        ref = doc.get("ref")
        if isinstance(ref, int) and not isinstance(ref, bool):
            ref = str(ref)
        if not isinstance(ref, str) or not ref:
            raise BadRequestError('send {"ref": "<version or alias>"}')
        name, _, bare = ref.rpartition("@")
        if name and name != self.model_name:
            raise BadRequestError(f"this replica serves {self.model_name}, not {name}")
        result = await self.swapper.swap(bare)
        return Response(200, orjson.dumps(result), version=result["version"])

    async def _drain(self, req: Request) -> Response:
        """Stop taking inference requests (ready turns false); return once in-flight ones
        are done, or after drain_timeout_s."""
        self.draining = True
        deadline = time.monotonic() + self.settings.serve.drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return Response(200, orjson.dumps({"drained": self.inflight == 0,
                                           "inflight": self.inflight}))

    # -- inference ------------------------------------------------------------------------
    async def _predict(self, req: Request) -> Response:
        self._check_name(req)
        _require_json(req)
        doc = oip.loads_object(req.body)
        if "instances" not in doc:
            raise BadRequestError('field \'instances\' is missing; send {"instances": [...]}')
        slot = self._acquire()
        try:
            x = slot.signature.from_instances(doc["instances"])
            y = await slot.batcher.submit(x)
        finally:
            self._release(slot)
        if self.capture is not None and "x-stratum-shadow" not in req.headers:
            self.capture.add(req.request_id, slot.version, doc["instances"], served(slot, y))
        out: dict[str, Any] = {"predictions": plain_predictions(slot, y),
                               "model_version": slot.version}
        if slot.classifier:
            out["classes"] = slot.spec.classes
        return Response(200, orjson.dumps(out, option=_NUMPY), version=slot.version)

    async def _infer(self, req: Request) -> Response:
        self._check_name(req)
        hlen = _binary_header_length(req)
        if hlen is None:
            _require_json(req)
        request = oip.decode_request(req.body, hlen)
        slot = self._acquire()
        try:
            _check_version(req, slot)
            x = batch_from_tensors(slot, request.inputs)
            y = await slot.batcher.submit(x)
        finally:
            self._release(slot)
        if self.capture is not None and "x-stratum-shadow" not in req.headers:
            self.capture.add(req.request_id, slot.version, instances_of(request.inputs),
                             served(slot, y))
        body, header_len = oip.encode_response(
            req.params["name"], slot.version, request.id, oip_outputs(slot, y, request.outputs),
            request.binary_outputs)
        if header_len is None:
            return Response(200, body, version=slot.version)
        return Response(200, body, content_type=b"application/octet-stream", version=slot.version,
                        headers=[(oip.HEADER_LENGTH.encode(), str(header_len).encode())])

    async def _feedback(self, req: Request) -> Response:
        """``{"request_id", "label"}`` or a list → the feedback queue (deduplicated)."""
        self._check_name(req)
        _require_json(req)
        items = parse_feedback(req.body)
        slot = self.swapper.current
        if slot is None:
            raise NotReadyError("no model version is loaded yet", hint="retry")
        if self._queue is None:
            assert self.settings.queue_url
            self._queue = await asyncio.to_thread(open_queue, self.settings.queue_url,
                                                  feedback_stream(self.model_name))
        intake = FeedbackIntake(self.model_name, self.request_log, self._queue,
                                slot.spec.classes if slot.classifier else None)
        logged = await asyncio.to_thread(intake.lookup, items)
        if len(logged) < len(items) and self.capture is not None:
            # Just served (here or by another replica) and not written yet: wait one flush.
            await asyncio.to_thread(self.capture.flush)
            await asyncio.sleep(3 * self._flush_s)
            logged = await asyncio.to_thread(intake.lookup, items)
        result = await asyncio.to_thread(intake.submit, items, logged)
        return Response(200, orjson.dumps(result.to_dict()))

    def _check_name(self, req: Request) -> None:
        name = req.params["name"]
        if name not in self.names:
            raise UnknownModelError(f"model {name!r} is not served here",
                                    hint=f"this replica serves {self.model_name!r}")

    def _slot_for(self, req: Request) -> ModelSlot:
        self._check_name(req)
        slot = self.swapper.current
        if slot is None:
            raise NotReadyError("no model version is loaded yet")
        _check_version(req, slot)
        return slot

    def _acquire(self) -> ModelSlot:
        slot = self.swapper.current
        if slot is None or self.draining:
            raise NotReadyError("this replica is draining" if self.draining else
                                "no model version is loaded yet", hint="retry on another replica")
        slot.inflight += 1
        self.inflight += 1
        return slot

    def _release(self, slot: ModelSlot) -> None:
        slot.release()
        self.inflight -= 1


# -- encoding helpers (pure functions of a slot and arrays) ---------------------------------
def batch_from_tensors(slot: ModelSlot, inputs: list[oip.Tensor]) -> np.ndarray:
    """One input → a batch tensor; several inputs → one column per feature name."""
    if len(inputs) == 1:
        t = inputs[0]
        if t.datatype not in oip.NUMERIC:
            raise SignatureError(f"input {t.name!r} has datatype {t.datatype}; send FP32")
        return slot.signature.from_array(t.array, f"input {t.name!r}")
    columns: dict[str, np.ndarray] = {}
    for t in inputs:
        if t.array.ndim not in (1, 2) or (t.array.ndim == 2 and t.array.shape[1] != 1):
            raise SignatureError(f"input {t.name!r}: one input per feature must have shape "
                                 f"[n] or [n, 1], got {t.shape}")
        columns[t.name] = t.array.reshape(-1)
    return slot.signature.from_columns(columns)


def oip_outputs(slot: ModelSlot, y: np.ndarray, wanted: list[str] | None) -> list[oip.Tensor]:
    n = len(y)
    if slot.classifier:
        labels = slot.class_labels[y.argmax(axis=1)]
        avail = {
            "probabilities": oip.Tensor("probabilities", "FP32", [n, y.shape[1]], y),
            "label": oip.Tensor("label", oip.datatype_of(labels), [n], labels),
        }
    else:
        avail = {"prediction": oip.Tensor("prediction", "FP32", [n], y)}
    if wanted is None:
        return list(avail.values())
    unknown = [w for w in wanted if w not in avail]
    if unknown:
        raise BadRequestError(f"unknown output(s) {unknown}; this model has {sorted(avail)}")
    return [avail[w] for w in wanted]


def served(slot: ModelSlot, y: np.ndarray) -> dict[str, Any]:
    """What the request log keeps of a prediction: the classes, or the values."""
    if slot.classifier:
        return {"classes": slot.class_labels[y.argmax(axis=1)].tolist()}
    return {"values": y.reshape(-1).tolist()}


def instances_of(inputs: list[oip.Tensor]) -> Any:
    """OIP tensors as the plain route's instances: the array itself (serialised by orjson
    when the capture is written, off the request path), or one object per row."""
    if len(inputs) == 1:
        return np.ascontiguousarray(inputs[0].array)
    columns = {t.name: t.array.reshape(-1).tolist() for t in inputs}
    n = min(len(c) for c in columns.values())
    return [{k: c[i] for k, c in columns.items()} for i in range(n)]


def plain_predictions(slot: ModelSlot, y: np.ndarray) -> list[Any]:
    if not slot.classifier:
        return y.tolist()
    labels = slot.class_labels[y.argmax(axis=1)].tolist()
    return [{"class": c, "probabilities": row} for c, row in zip(labels, y, strict=True)]


def runtime_info(runtime: Any) -> dict[str, Any]:
    """What executes the forward pass, and why not ONNX Runtime when a torch net fell back."""
    info: dict[str, Any] = {"framework": runtime.framework,
                            "backend": getattr(runtime, "backend", runtime.framework)}
    if getattr(runtime, "fallback_reason", None):
        info["fallback_reason"] = runtime.fallback_reason
    return info


def model_metadata(slot: ModelSlot) -> dict[str, Any]:
    sig = slot.signature
    outputs: list[dict[str, Any]]
    if slot.classifier:
        k = len(slot.spec.classes or [])
        outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, k]},
                   {"name": "label", "datatype": oip.datatype_of(slot.class_labels),
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


def _check_version(req: Request, slot: ModelSlot) -> None:
    v = req.params.get("version")
    if v is not None and v.lstrip("v") != str(slot.version):
        raise UnknownModelError(f"model {slot.name} version {v} is not loaded here",
                                hint=f"this replica serves version {slot.version}")


def _require_json(req: Request) -> None:
    ctype = req.headers.get("content-type")
    # No content type is taken as JSON: the Triton client sends none.
    if ctype is not None and not ctype.startswith("application/json"):
        raise UnsupportedMediaTypeError(f"content type {ctype!r} is not accepted",
                                        hint="send application/json")


def _binary_header_length(req: Request) -> int | None:
    raw = req.headers.get(oip.HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequestError(f"{oip.HEADER_LENGTH} must be a number of bytes, got {raw!r}")
    return int(raw)


def _init_forward_thread(threads: int | None) -> None:
    # Intra-op thread counts are per calling thread in torch: set them where forward runs.
    import sys

    if threads and "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


__all__ = ["JSON", "Replica"]
