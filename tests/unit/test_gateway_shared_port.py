"""Several deployments on one gateway port: tables kept per deployment and merged
(``traffic.merge``), pushed over ``/admin/routes/{name}`` and followed from the store
(``gateway.sync``), each deployment with its own policy, key requirement and rate limit.
The gateway runs in-process over httpx's ASGI transport against a real SQLite store."""

from __future__ import annotations

import asyncio

import httpx

from stratum.config import Settings
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec
from stratum.gateway.sync import routes_on_port, sync_once
from stratum.gateway.traffic import PoolLimits, merge
from stratum.security.keys import generate_key, hash_key
from stratum.store import Store
from stratum.store.runtime import RuntimeStore
from tests.services import free_port

ADMIN = {"x-stratum-admin-token": "t0k"}


def table(name: str, *urls: str, policy: str | None = None,
          limits: PoolLimits | None = None) -> RoutesSpec:
    pool = PoolSpec(groups=[GroupSpec(version=1, replicas=list(urls))], limits=limits)
    return RoutesSpec(deployments={name: pool}, policy=policy)


async def _call(gw: Gateway, method: str, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, path, **kw)  # type: ignore[arg-type]


def test_merge_keeps_each_deployments_policy_and_the_first_claim_to_a_name() -> None:
    a = table("a", "http://127.0.0.1:9001", policy="round_robin")
    b = table("b", "http://127.0.0.1:9002", policy="consistent_hash")
    b.deployments["a"] = b.deployments["b"]  # a stale table claiming a's name
    merged = merge({"b": b, "a": a})
    assert merged.deployments["a"].policy == "round_robin"  # "a" sorts first and keeps it
    assert merged.deployments["b"].policy == "consistent_hash"
    assert merge({"a": a}) is a
    assert merged.etag() == merge({"a": a, "b": b}).etag()  # order of parts does not matter


def test_parts_are_installed_and_removed_one_deployment_at_a_time(settings: Settings) -> None:
    gw = Gateway(settings, admin_token="t0k")
    a = table("a", "http://127.0.0.1:9001").model_dump_json()
    b = table("b", "http://127.0.0.1:9002").model_dump_json()
    for name, body in (("a", a), ("b", b)):
        r = asyncio.run(_call(gw, "PUT", f"/admin/routes/{name}", content=body, headers=ADMIN))
        assert r.status_code == 200, r.text
    shown = asyncio.run(_call(gw, "GET", "/admin/routes", headers=ADMIN)).json()
    assert set(shown["parts"]) == {"a", "b"} and set(shown["routes"]["deployments"]) == {"a", "b"}
    assert asyncio.run(_call(gw, "PUT", "/admin/routes/b", content=b,
                             headers={})).status_code == 401
    assert asyncio.run(_call(gw, "PUT", "/admin/routes/..%2Fx", content=b,
                             headers=ADMIN)).status_code == 400
    r = asyncio.run(_call(gw, "DELETE", "/admin/routes/a", headers=ADMIN))
    assert r.status_code == 200 and set(r.json()["parts"]) == {"b"}
    assert asyncio.run(_call(gw, "DELETE", "/admin/routes/a", headers=ADMIN)).status_code == 404
    r = asyncio.run(_call(gw, "POST", "/v1/models/a:predict", json={}))
    assert r.status_code == 404 and "deployed: b" in r.json()["hint"]
    assert asyncio.run(_call(gw, "GET", "/admin/routes/b", headers=ADMIN)).status_code == 405


def test_each_deployment_has_its_own_key_requirement_and_rate_limit(
        settings: Settings, store: Store) -> None:
    key, key_id = generate_key()
    store.meta.add_api_key(key_id, "alice", hash_key(key), ["predict"])
    dead = f"http://127.0.0.1:{free_port()}"  # answers nothing: a 503 means admitted
    gw = Gateway(settings, meta=store.meta, admin_token="t0k", parts={
        "open": table("open", dead),
        "keyed": table("keyed", dead, limits=PoolLimits(require_auth=True,
                                                        rate_limit_per_s=0.01,
                                                        rate_limit_burst=2))})
    auth = {"authorization": f"Bearer {key}"}
    assert asyncio.run(_call(gw, "POST", "/v1/models/open:predict")).status_code == 503
    assert asyncio.run(_call(gw, "POST", "/v1/models/keyed:predict")).status_code == 401
    codes = [asyncio.run(_call(gw, "POST", "/v1/models/keyed:predict", headers=auth)
                         ).status_code for _ in range(3)]
    assert codes == [503, 503, 429], codes
    # The limit is keyed's alone; a 404 for an unknown model still needs no key here.
    assert asyncio.run(_call(gw, "POST", "/v1/models/open:predict")).status_code == 503
    assert asyncio.run(_call(gw, "POST", "/v1/models/nope:predict")).status_code == 404


def test_a_gateway_follows_every_deployment_on_its_port_in_the_store(
        settings: Settings, store: Store) -> None:
    runtime = RuntimeStore(store.meta)
    a, b, elsewhere = (table("a", "http://127.0.0.1:9001"), table("b", "http://127.0.0.1:9002"),
                       table("c", "http://127.0.0.1:9003"))
    runtime.save_routes("a", a.etag(), a.model_dump(mode="json"), 8000)
    runtime.save_routes("b", b.etag(), b.model_dump(mode="json"), 8000)
    runtime.save_routes("c", elsewhere.etag(), elsewhere.model_dump(mode="json"), 8001)
    assert set(routes_on_port(runtime, 8000)) == {"a", "b"}
    gw = Gateway(settings, meta=store.meta, name="a", port=8000)
    asyncio.run(sync_once(gw, runtime, 8000))
    assert gw.part_etags == {"a": a.etag(), "b": b.etag()}
    b2 = table("b", "http://127.0.0.1:9004")
    runtime.save_routes("b", b2.etag(), b2.model_dump(mode="json"), 8000)
    runtime.drop("a")
    asyncio.run(sync_once(gw, runtime, 8000))
    assert gw.part_etags == {"b": b2.etag()}
    assert list(gw.table.upstreams) == ["http://127.0.0.1:9004"]
    # One started by hand on another port follows its own deployment there too.
    assert set(routes_on_port(runtime, 9100, "c")) == {"c"}
    aside = Gateway(settings, meta=store.meta, name="c", port=9100)
    asyncio.run(sync_once(aside, runtime, 9100, "c"))
    assert aside.part_etags == {"c": elsewhere.etag()}
