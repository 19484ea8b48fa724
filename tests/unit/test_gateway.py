"""Fast tests of the gateway's parts: balancing, retry budget, rate limit, routing table,
and the ASGI app itself (auth, limits, errors) driven in-process over httpx's ASGI
transport with a real metadata store."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import pytest

from stratum.config import Settings
from stratum.errors import AuthError, PermissionDeniedError, RateLimitedError
from stratum.gateway import Gateway, GroupSpec, PoolSpec, RoutesSpec, static_routes
from stratum.gateway.auth import RateLimiter, scope_for
from stratum.gateway.balancer import ConsistentHash, LeastOutstanding, RoundRobin
from stratum.gateway.health import Health
from stratum.gateway.retry import RetryBudget, should_retry
from stratum.gateway.traffic import RouteTable
from stratum.gateway.upstream import Upstream
from stratum.security.access import KeyChecker
from stratum.security.keys import generate_key, hash_key
from stratum.store import Store
from tests.services import free_port


def ups(n: int) -> list[Upstream]:
    return [Upstream(f"http://127.0.0.1:{9000 + i}") for i in range(n)]


def test_least_outstanding_prefers_idle_and_rotates_ties() -> None:
    a, b, c = ups(3)
    a.outstanding, b.outstanding, c.outstanding = 3, 0, 1
    lb = LeastOutstanding()
    assert lb.pick([a, b, c], None) is b
    b.outstanding = c.outstanding = a.outstanding = 0
    picks = Counter(lb.pick([a, b, c], None).url for _ in range(30))
    assert set(picks.values()) == {10}


def test_round_robin_cycles() -> None:
    rr, replicas = RoundRobin(), ups(3)
    assert [rr.pick(replicas, None) for _ in range(6)] == replicas * 2


def test_consistent_hash_is_sticky_and_moves_only_the_removed_share() -> None:
    ch, replicas = ConsistentHash(), ups(4)
    keys = [f"session-{i}".encode() for i in range(400)]
    before = {k: ch.pick(replicas, k).url for k in keys}
    assert before == {k: ch.pick(replicas, k).url for k in keys}
    assert len(set(before.values())) == 4
    gone = replicas[1]
    after = {k: ch.pick([r for r in replicas if r is not gone], k).url for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == gone.url for k in moved)
    assert ch.pick(replicas, None) in replicas  # no key: least outstanding


def test_retry_budget_is_earned_by_traffic() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=0.0)
    assert not b.can_retry()
    for _ in range(10):
        b.on_request()
    assert b.can_retry() and b.can_retry() and not b.can_retry()
    assert (b.spent, b.refused) == (2, 2)
    assert should_retry(503) and should_retry(500) and not should_retry(422)


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3.0, clock=lambda: now[0])
    for _ in range(3):
        rl.check("k")
    with pytest.raises(RateLimitedError) as exc:
        rl.check("k")
    assert exc.value.http_status == 429
    rl.check("other")  # buckets are per key
    now[0] += 0.5
    rl.check("k")
    with pytest.raises(RateLimitedError):
        rl.check("k")


def test_scope_for_paths() -> None:
    assert scope_for("/v1/models/m:predict") == "predict"
    assert scope_for("/v2/models/m/infer") == "predict"
    assert scope_for("/v1/models/m/feedback") == "feedback"
    assert scope_for("/admin/routes") == "admin"
    assert scope_for("/v2/health/ready") is None


def test_weighted_groups_and_failover() -> None:
    spec = RoutesSpec(deployments={"m": PoolSpec(groups=[
        GroupSpec(version=1, weight=90, replicas=["http://127.0.0.1:9001"]),
        GroupSpec(version=2, weight=10, replicas=["http://127.0.0.1:9002"])])})
    table = RouteTable(spec, "least_outstanding", {})
    pool = table.pool("m")
    assert pool is not None and table.pool("other") is None
    rng = random.Random(7)
    share = Counter(pool.choose_group(rng.random()).version for _ in range(5000))
    assert 0.08 < share[2] / 5000 < 0.12
    pool.groups[1].replicas[0].healthy = False  # the canary is down: its share fails over
    assert {pool.choose_group(rng.random()).version for _ in range(200)} == {1}
    again = RouteTable(spec, "round_robin", table.upstreams)
    assert again.upstreams["http://127.0.0.1:9002"] is table.upstreams["http://127.0.0.1:9002"]
    assert again.etag == table.etag
    assert static_routes(["http://127.0.0.1:9001"]).deployments["*"].groups[0].replicas


def test_passive_ejection() -> None:
    h, (up,) = Health(eject_after=3, interval=1.0), ups(1)
    h.on_failure(up, connection_level=False)
    h.on_failure(up, connection_level=False)
    assert up.healthy
    h.on_failure(up, connection_level=False)
    assert not up.healthy
    (up2,) = ups(1)
    h.on_failure(up2, connection_level=True)
    assert not up2.healthy and h.ejections == 2


def test_active_check_ejects_a_dead_replica() -> None:
    up = Upstream(f"http://127.0.0.1:{free_port()}")
    assert asyncio.run(Health(3, 1.0, timeout=0.5).check(up)) is False
    assert not up.healthy


async def _call(gw: Gateway, method: str, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.request(method, path, **kw)  # type: ignore[arg-type]


def test_gateway_errors_are_json_4xx_or_503(settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings.gateway.max_body_bytes = 2048
    gw = Gateway(settings, RoutesSpec(deployments={"m": PoolSpec(groups=[
        GroupSpec(version=1, replicas=[dead])])}))
    r = asyncio.run(_call(gw, "POST", "/v1/models/x:predict", json={}))
    assert r.status_code == 404 and "not deployed" in r.json()["message"]
    r = asyncio.run(_call(gw, "POST", "/v1/models/m:predict", content=b"x" * 4096))
    assert r.status_code == 413
    r = asyncio.run(_call(gw, "POST", "/v1/models/m:predict", json={"instances": [[1]]},
                          headers={"x-request-id": "rid-1"}))
    assert r.status_code == 503 and "no replica could answer" in r.json()["message"]
    assert r.headers["x-request-id"] == "rid-1"
    assert asyncio.run(_call(gw, "GET", "/v2/health/live")).status_code == 200
    metrics = asyncio.run(_call(gw, "GET", "/metrics")).text
    assert 'stratum_gateway_requests_total{code="413",model="m",route="predict"} 1.0' in metrics
    assert 'stratum_gateway_requests_total{code="404",model="unknown",route="predict"} 1.0' \
        in metrics


def test_routes_are_installed_over_http(settings: Settings) -> None:
    gw = Gateway(settings, static_routes(["http://127.0.0.1:9001"]), admin_token="t0k")
    secret = "s3cret-" * 6
    body = RoutesSpec(deployments={"m": PoolSpec(groups=[
        GroupSpec(version=4, replicas=["http://127.0.0.1:9002"])])},
        secrets={"http://127.0.0.1:9002": secret}).model_dump_json()
    # Without a store there are no admin keys to check: the token or nothing, auth on or off.
    for headers in ({}, {"x-stratum-admin-token": "nope"}):
        r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=body, headers=headers))
        assert r.status_code == 401, r.text
    admin = {"x-stratum-admin-token": "t0k"}
    r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=body, headers=admin))
    assert r.status_code == 200 and list(r.json()["replicas"]) == ["http://127.0.0.1:9002"]
    assert gw.table.pool("m") is not None and gw.table.wildcard is None
    for path in ("/admin/routes", "/admin/info"):  # what is shown never holds a secret
        r = asyncio.run(_call(gw, "GET", path, headers=admin))
        assert r.status_code == 200 and secret not in r.text
    r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=b'{"deployments": 3}',
                          headers=admin))
    assert r.status_code == 400
    bad = b'{"secrets": {"http://127.0.0.1:9002": "short\\r\\nx: y"}}'
    r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=bad, headers=admin))
    assert r.status_code == 400  # a secret could not smuggle a header into the request head


def test_auth_on_the_gateway(settings: Settings, store: Store) -> None:
    key, key_id = generate_key()
    store.meta.add_api_key(key_id, "alice", hash_key(key), ["predict"])
    settings.gateway.require_auth = True
    gw = Gateway(settings, RoutesSpec(), meta=store.meta, admin_token="t0k")
    assert asyncio.run(_call(gw, "POST", "/v1/models/m:predict")).status_code == 401
    r = asyncio.run(_call(gw, "POST", "/v1/models/m:predict",
                          headers={"authorization": f"Bearer {key}"}))
    assert r.status_code == 404  # authorised, and nothing is deployed
    assert asyncio.run(_call(gw, "POST", "/v1/models/m/feedback",
                             headers={"x-api-key": key})).status_code == 403
    assert asyncio.run(_call(gw, "GET", "/admin/routes",
                             headers={"x-stratum-admin-token": "t0k"})).status_code == 200
    assert asyncio.run(_call(gw, "GET", "/admin/routes",
                             headers={"x-stratum-admin-token": "nope"})).status_code == 401
    assert asyncio.run(_call(gw, "GET", "/admin/routes",
                             headers={"x-api-key": key})).status_code == 403
    assert asyncio.run(_call(gw, "GET", "/v2/health/live")).status_code == 200


def test_admin_routes_need_a_credential_with_auth_off(settings: Settings, store: Store) -> None:
    admin, admin_id = generate_key()
    store.meta.add_api_key(admin_id, "ops", hash_key(admin), ["admin"])
    predict, predict_id = generate_key()
    store.meta.add_api_key(predict_id, "alice", hash_key(predict), ["predict"])
    assert not settings.gateway.require_auth
    gw = Gateway(settings, RoutesSpec(), meta=store.meta, admin_token="t0k")
    assert asyncio.run(_call(gw, "POST", "/v1/models/m:predict")).status_code == 404  # open
    for path in ("/admin/routes", "/admin/info"):
        assert asyncio.run(_call(gw, "GET", path)).status_code == 401
        assert asyncio.run(_call(gw, "GET", path, headers={"x-api-key": predict})
                           ).status_code == 403
        assert asyncio.run(_call(gw, "GET", path, headers={"x-api-key": admin})
                           ).status_code == 200
    r = asyncio.run(_call(gw, "PUT", "/admin/routes", content=b"{}",
                          headers={"authorization": f"Bearer {admin}"}))
    assert r.status_code == 200
    # A replica's admin routes are never reached through the gateway, even by an admin.
    gw.install(static_routes([f"http://127.0.0.1:{free_port()}"], "s" * 20))
    r = asyncio.run(_call(gw, "POST", "/admin/drain", headers={"x-api-key": admin}))
    assert r.status_code == 404


def test_key_checker_caches_and_sees_revocation(store: Store) -> None:
    key, key_id = generate_key()
    store.meta.add_api_key(key_id, "bob", hash_key(key), ["predict", "feedback"])
    kc = KeyChecker(store.meta, ttl=0.0)
    assert asyncio.run(kc.authorize(key, "feedback")) == key_id
    with pytest.raises(PermissionDeniedError):
        asyncio.run(kc.authorize(key, "admin"))
    store.meta.revoke_api_key(key_id)
    with pytest.raises(AuthError):
        asyncio.run(kc.authorize(key, "predict"))
    with pytest.raises(AuthError):
        asyncio.run(kc.authorize(key.replace("_", "-"), "predict"))
