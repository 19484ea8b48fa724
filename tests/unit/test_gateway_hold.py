"""A gateway in front of a deployment scaled to zero (an empty pool) holds requests: they
show as ``waiting`` on ``GET /admin/routes`` (what the autoscaler reads), go on once a
table routes the pool to a replica, and past the bound in time or count get a 503 with
``retry-after``. Driven in-process over httpx's ASGI transport, as tests/unit/test_gateway.py
does; the first request served after a real scale from zero is in
tests/integration/test_autoscale.py."""

from __future__ import annotations

import asyncio

import httpx

from stratum.config import Settings
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec
from tests.services import free_port

ADMIN = {"x-stratum-admin-token": "t0k"}
SAMPLE = {"instances": [[0.1, 0.2, 0.3, 0.4]]}


def _empty() -> RoutesSpec:
    return RoutesSpec(deployments={"m": PoolSpec(groups=[GroupSpec(version=1, replicas=[])])})


def _gateway(settings: Settings, timeout_s: float = 5.0, max_requests: int = 8) -> Gateway:
    settings.gateway.hold_timeout_s = timeout_s
    settings.gateway.hold_max_requests = max_requests
    return Gateway(settings, _empty(), admin_token="t0k")


def _client(gw: Gateway) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30)


def test_a_held_request_is_counted_and_goes_on_once_a_replica_is_routed(
        settings: Settings) -> None:
    gw = _gateway(settings)
    dead = f"http://127.0.0.1:{free_port()}"  # a replica that refuses: forwarded, then 503

    async def go() -> tuple[httpx.Response, dict[str, object], float]:
        async with _client(gw) as c:
            held = asyncio.create_task(c.post("/v1/models/m:predict", json=SAMPLE))
            shown: dict[str, object] = {}
            for _ in range(100):
                await asyncio.sleep(0.01)
                shown = (await c.get("/admin/routes", headers=ADMIN)).json()
                if shown["waiting"]:
                    break
            assert not held.done()
            t0 = asyncio.get_running_loop().time()
            routed = RoutesSpec(deployments={"m": PoolSpec(groups=[
                GroupSpec(version=1, replicas=[dead])])})
            r = await c.put("/admin/routes", content=routed.model_dump_json(), headers=ADMIN)
            assert r.status_code == 200 and r.json()["waiting"] == {"m": 1}
            resp = await held
            return resp, shown, asyncio.get_running_loop().time() - t0

    resp, shown, after = asyncio.run(go())
    assert shown["waiting"] == {"m": 1}
    # Released by the new table at once (not at the hold's 5 s bound) and forwarded: the
    # dead replica makes it the forwarding path's 503, not the hold's.
    assert after < 2.0
    assert resp.status_code == 503 and "no replica could answer" in resp.json()["message"]
    assert gw.hold.waiting == {}


def test_a_gateway_at_zero_is_ready_to_take_requests(settings: Settings) -> None:
    async def ready(gw: Gateway) -> int:
        async with _client(gw) as c:
            return (await c.get("/v2/health/ready")).status_code

    assert asyncio.run(ready(_gateway(settings))) == 200  # it holds them: keep sending
    assert asyncio.run(ready(Gateway(settings, RoutesSpec()))) == 503  # nothing deployed


def test_past_the_time_bound_a_503_with_retry_after(settings: Settings) -> None:
    gw = _gateway(settings, timeout_s=0.3)

    async def go() -> httpx.Response:
        async with _client(gw) as c:
            return await c.post("/v1/models/m:predict", json=SAMPLE)

    r = asyncio.run(go())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "NoReplicaError" and "within 0.3 s" in r.json()["message"]
    assert gw.hold.waiting == {}


def test_past_the_count_bound_a_503_at_once(settings: Settings) -> None:
    gw = _gateway(settings, timeout_s=2.0, max_requests=3)

    async def go() -> list[httpx.Response]:
        async with _client(gw) as c:
            calls = [asyncio.create_task(c.post("/v1/models/m:predict", json=SAMPLE))
                     for _ in range(5)]
            return list(await asyncio.gather(*calls))

    answers = asyncio.run(go())
    refused = [r for r in answers if "already wait" in r.text]
    timed_out = [r for r in answers if "within 2 s" in r.text]
    assert len(refused) == 2 and len(timed_out) == 3
    assert all(r.status_code == 503 and r.headers["retry-after"] == "1" for r in answers)
    metrics = asyncio.run(_metrics(gw))
    assert "stratum_gateway_held_requests 0.0" in metrics


def test_undeployed_while_held_is_a_404(settings: Settings) -> None:
    gw = _gateway(settings)

    async def go() -> httpx.Response:
        async with _client(gw) as c:
            held = asyncio.create_task(c.post("/v1/models/m:predict", json=SAMPLE))
            while not gw.hold.waiting:
                await asyncio.sleep(0.01)
            gw.install(RoutesSpec())
            return await held

    r = asyncio.run(go())
    assert r.status_code == 404 and "no longer deployed" in r.json()["message"]


async def _metrics(gw: Gateway) -> str:
    async with _client(gw) as c:
        return (await c.get("/metrics")).text
