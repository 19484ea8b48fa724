"""The replica's admin routes, called by the control plane: ``/admin/info``, ``/admin/swap``
(hot swap to another version) and ``/admin/drain`` (stop taking inference before a stop).

Handlers are functions of the ``Replica`` and the request, bound to it like ``routes``'.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from stratum.asgi import Request, Response
from stratum.errors import BadRequestError
from stratum.serve.oip import loads_object
from stratum.serve.routes import require_json

if TYPE_CHECKING:
    from stratum.serve.app import Replica


async def info(replica: Replica, req: Request) -> Response:
    slot = replica.swapper.current
    return Response(200, orjson.dumps({
        "name": replica.deployment, "model": replica.model_name,
        "version": slot.version if slot else None, "pid": os.getpid(),
        "inflight": replica.inflight, "ready": replica.ready, "draining": replica.draining,
        "queue_depth": slot.batcher.queue_depth if slot else 0,
        "runtime": runtime_info(slot.runtime) if slot else None,
    }))


async def swap(replica: Replica, req: Request) -> Response:
    require_json(req)
    doc = loads_object(req.body)
    ref = doc.get("ref")
    if isinstance(ref, int) and not isinstance(ref, bool):
        ref = str(ref)
    if not isinstance(ref, str) or not ref:
        raise BadRequestError('send {"ref": "<version or alias>"}')
    name, _, bare = ref.rpartition("@")
    if name and name != replica.model_name:
        raise BadRequestError(f"this replica serves {replica.model_name}, not {name}")
    result = await replica.swapper.swap(bare)
    return Response(200, orjson.dumps(result), version=result["version"])


async def drain(replica: Replica, req: Request) -> Response:
    """Stop taking inference requests (ready turns false); return once in-flight ones
    are done, or after drain_timeout_s."""
    replica.draining = True
    deadline = time.monotonic() + replica.settings.serve.drain_timeout_s
    while replica.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return Response(200, orjson.dumps({"drained": replica.inflight == 0,
                                       "inflight": replica.inflight}))


def runtime_info(runtime: Any) -> dict[str, Any]:
    """What executes the forward pass, and why not ONNX Runtime when a torch net fell back."""
    out: dict[str, Any] = {"framework": runtime.framework,
                           "backend": getattr(runtime, "backend", runtime.framework)}
    if getattr(runtime, "fallback_reason", None):
        out["fallback_reason"] = runtime.fallback_reason
    return out
