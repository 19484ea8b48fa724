"""The replica's admin routes, called by the control plane: ``/admin/info``, ``/admin/swap``
(hot swap to another version) and ``/admin/drain`` (stop taking inference before a stop).

Handlers are functions of the ``Replica`` and the request, bound to it like ``routes``'.
Swap and drain go to the audit log, whatever their outcome (``supervisor``: the caller held
the deployment secret); so do attempts the secret check refused (``refused``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from stratum.asgi import Request, Response
from stratum.errors import BadRequestError, StratumError
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
        "made_by": slot.spec.lineage.made_by() if slot else None,
    }))


async def swap(replica: Replica, req: Request) -> Response:
    return await _audited(replica, req, "swap", lambda detail: _swap(replica, req, detail))


async def _swap(replica: Replica, req: Request, detail: dict[str, Any]) -> Response:
    slot = replica.swapper.current
    detail["before"] = slot.version if slot else None
    require_json(req)
    doc = loads_object(req.body)
    ref = doc.get("ref")
    if isinstance(ref, int) and not isinstance(ref, bool):
        ref = str(ref)
    if not isinstance(ref, str) or not ref:
        raise BadRequestError('send {"ref": "<version or alias>"}')
    detail["ref"] = ref[:100]
    name, _, bare = ref.rpartition("@")
    if name and name != replica.model_name:
        raise BadRequestError(f"this replica serves {replica.model_name}, not {name}")
    result = await replica.swapper.swap(bare)
    detail["after"] = result["version"]
    return Response(200, orjson.dumps(result), version=result["version"])


async def drain(replica: Replica, req: Request) -> Response:
    """Stop taking inference requests (ready turns false); return once in-flight ones
    are done, or after drain_timeout_s."""
    return await _audited(replica, req, "drain", lambda detail: _drain(replica, detail))


async def _drain(replica: Replica, detail: dict[str, Any]) -> Response:
    detail["inflight_before"] = replica.inflight
    replica.draining = True
    deadline = time.monotonic() + replica.settings.serve.drain_timeout_s
    while replica.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    detail.update(drained=replica.inflight == 0, inflight_after=replica.inflight)
    return Response(200, orjson.dumps({"drained": replica.inflight == 0,
                                       "inflight": replica.inflight}))


async def _audited(replica: Replica, req: Request, action: str,
                   work: Callable[[dict[str, Any]], Awaitable[Response]]) -> Response:
    """Run ``work`` (which notes what it changed in ``detail``) and record the outcome."""
    detail: dict[str, Any] = {"pid": os.getpid()}
    status = 500
    try:
        resp = await work(detail)
        status = resp.status
        return resp
    except StratumError as exc:
        status = exc.http_status
        raise
    finally:
        await replica.audit.record(replica.admin_actor, _source(req.client), action,
                                   replica.deployment, status, detail)


async def refused(replica: Replica, method: str, path: str,
                  client: tuple[str, int] | None) -> None:
    """Record an admin call the secret check refused (401)."""
    await replica.audit.record("anonymous", _source(client), path.removeprefix("/admin/"),
                               replica.deployment, 401, {"pid": os.getpid(), "method": method})


def _source(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


def runtime_info(runtime: Any) -> dict[str, Any]:
    """What executes the forward pass, and why not ONNX Runtime when a torch net fell back."""
    out: dict[str, Any] = {"framework": runtime.framework,
                           "backend": getattr(runtime, "backend", runtime.framework)}
    if getattr(runtime, "fallback_reason", None):
        out["fallback_reason"] = runtime.fallback_reason
    device = getattr(runtime, "device", None)
    if device is not None and out["backend"] == "eager":  # where, and in which precision
        out["device"] = str(device)
        out["bf16"] = bool(getattr(runtime, "bf16", False))
    return out
