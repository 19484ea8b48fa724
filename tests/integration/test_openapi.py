"""Property-based runs of schemathesis over each server's /openapi.json, as real processes:
a replica, a gateway in front of it (API keys on) and a control plane. Each server gets at
least ``CASES`` generated requests, positive and negative, with its credentials; every
answer must be no 5xx, a documented status, a documented content type and, where a schema
is given, match it; no request may take longer than ``TIMEOUT``; afterwards each process
is alive, healthy and has logged no traceback.

The runs are reproducible (hypothesis ``derandomize``) and do not shrink (a failure is
reported as found, with a curl line to replay it).

Destructive operations: ``POST /admin/drain`` (the replica stops serving for good) and the
gateway's ``PUT /admin/routes`` (a generated table points it at nowhere) are left out of
the main runs and fuzzed last, in ``test_destructive_admin_routes_leave_processes_alive``,
after which the gateway's table is put back. ``POST /admin/swap`` stays in: the only
version registered is 1, so any swap that succeeds reloads the version already served.
The control plane runs on a home with no model registered, so no generated deploy can
start a process; its deletes, rollbacks and scales reach the store and answer 404.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stratum.config import Settings, load_settings
from stratum.control import apidocs
from stratum.security.keys import generate_key, hash_key
from stratum.security.tokens import REPLICA_SECRET_ENV
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    ADMIN,
    REPLICA_AUTH,
    REPLICA_SECRET,
    admin_headers,
    gateway,
    register_tiny,
)
from tests.services import free_port, started

pytestmark = pytest.mark.integration

CASES = 500  # generated requests per server, at least
TIMEOUT = 10.0  # seconds per request: longer is a hang
MODEL = "tiny"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
DRAIN, PUT_ROUTES = "POST /admin/drain", "PUT /admin/routes"
# One deployment's part of a gateway's table: as destructive as the whole table.
PUT_PART, DELETE_PART = "PUT /admin/routes/{name}", "DELETE /admin/routes/{name}"
TABLE_WRITES = [PUT_ROUTES, PUT_PART, DELETE_PART]
# Security parameters are not generated: every request carries the credentials below,
# which is what lets the run reach past the 401s (those have tests of their own).
CONFIG = {"generation": {"with-security-parameters": False}}


@dataclass
class Server:
    name: str
    url: str
    proc: Popen[bytes]
    log: Path
    headers: dict[str, str]  # its credentials
    probe: str  # answers 200 while the process is healthy
    # Path parameters that reach past "unknown model" (most cases use them).
    known: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    cases: Counter[str]  # per operation
    statuses: Counter[int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def fuzz(srv: Server, n: int, *, only: Sequence[str] = (), leave_out: Sequence[str] = (),
         after: Callable[[], None] | None = None) -> Run:
    """Run ``n`` generated cases against ``srv``; raise on the first failed check.
    ``after`` runs after each case: a check of what the case changed."""
    schema: schemathesis.BaseSchema = schemathesis.openapi.from_url(
        srv.url + "/openapi.json", timeout=TIMEOUT, config=schemathesis.Config.from_dict(CONFIG))
    if only:
        schema = schema.include(name=list(only))
    if leave_out:
        schema = schema.exclude(name=list(leave_out))
    ops = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot use: {result}"
        ops.append(result.ok())
    strategy = st.one_of(
        *(s for op in ops for s in schema.get_strategies_from_examples(
            op, path_parameters=srv.known)),
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters=srv.known),
        schema.as_strategy(GenerationMode.NEGATIVE, path_parameters=srv.known),
        schema.as_strategy(GenerationMode.POSITIVE),  # any name: the 404 paths
    )
    run = Run(Counter(), Counter(), 0.0)
    session = requests.Session()

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=srv.url, headers=dict(srv.headers), session=session,
                             timeout=TIMEOUT)
        run.cases[case.operation.label] += 1
        run.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=srv.headers)
        if after is not None:
            after()

    start = time.monotonic()
    try:
        check()
    finally:
        run.seconds = time.monotonic() - start
        session.close()
        print(f"\n{srv.name}: {run.total} cases in {run.seconds:.1f}s, statuses "
              f"{dict(sorted(run.statuses.items()))}\n  {dict(sorted(run.cases.items()))}")
    return run


def assert_healthy(srv: Server) -> None:
    assert srv.proc.poll() is None, f"{srv.name} died: {srv.log.read_text()[-3000:]}"
    assert httpx.get(srv.url + srv.probe, timeout=5).status_code == 200
    log = srv.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


# -- the processes ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, str]:
    """A home with the tiny model and a predict+feedback key; the gateway wants keys."""
    tmp = tmp_path_factory.mktemp("openapi")
    settings = load_settings(home=tmp / "home")
    settings.gateway.require_auth = True
    settings.online.capture_flush_ms = 5  # unknown feedback waits one flush: keep it short
    store = Store.open(settings)
    try:
        register_tiny(store, MODEL)
        key, key_id = generate_key()
        store.meta.add_api_key(key_id, "openapi-test", hash_key(key), ["feedback", "predict"])
    finally:
        store.close()
    return settings, tmp, key


@pytest.fixture(scope="module")
def replica_server(home: tuple[Settings, Path, str]) -> Iterator[Server]:
    settings, tmp, _ = home
    port, log = free_port(), tmp / "replica.log"
    url = f"http://127.0.0.1:{port}"
    env = {**settings.child_env(), REPLICA_SECRET_ENV: REPLICA_SECRET}
    with started([sys.executable, "-m", "stratum.serve", "--model", f"{MODEL}@1", "--port",
                  str(port)], ready_url=url + "/v2/health/ready", env=env, log=log,
                 timeout=90) as proc:
        yield Server("replica", url, proc, log, dict(REPLICA_AUTH), "/v2/health/live",
                     {"name": MODEL, "version": "1"})


@pytest.fixture(scope="module")
def gateway_server(home: tuple[Settings, Path, str],
                   replica_server: Server) -> Iterator[Server]:
    settings, tmp, key = home
    with gateway(settings, [replica_server.url], tmp / "gateway.log") as (url, proc):
        yield Server("gateway", url, proc, tmp / "gateway.log",
                     {"authorization": f"Bearer {key}", **ADMIN}, "/v2/health/live",
                     {"name": MODEL, "version": "1"})


@pytest.fixture(scope="module")
def control_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("openapi-control")
    settings = load_settings(home=tmp / "home")  # no model: nothing can be deployed
    headers = admin_headers(settings)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "control.log"
    with started([sys.executable, "-m", "stratum.control", "--port", str(port)],
                 ready_url=url + "/health", env=settings.child_env(), log=log,
                 timeout=60) as proc:
        yield Server("control", url, proc, log, headers, "/health")


# -- the runs -------------------------------------------------------------------------------
def test_the_documents_are_public(replica_server: Server, gateway_server: Server,
                                  control_server: Server) -> None:
    for srv in (replica_server, gateway_server, control_server):
        r = httpx.get(srv.url + "/openapi.json", timeout=5)
        assert r.status_code == 200 and r.json()["openapi"] == "3.1.0", srv.name
        assert r.headers["content-type"].startswith("application/json")


def test_the_control_plane_docs_are_self_hosted(control_server: Server) -> None:
    """/docs (Swagger UI) names no other host: its script, style and icon come from this
    server, as the files vendored in the package. It is as public as /openapi.json, and
    what it calls still wants the admin key."""
    url = control_server.url
    page = httpx.get(url + "/docs", timeout=5)  # no credentials
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html, html
    assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io
    refs = re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)"', html)
    wanted = {"swagger-ui-bundle.js": ("text/javascript", "application/javascript"),
              "swagger-ui.css": ("text/css",), "favicon-32x32.png": ("image/png",)}
    assert sorted(r.rsplit("/", 1)[-1] for r in refs) == sorted(wanted), refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # this origin
        asset = httpx.get(url + ref, timeout=5)
        name = ref.rsplit("/", 1)[-1]
        assert asset.status_code == 200, (ref, asset.status_code)
        assert asset.headers["content-type"].split(";")[0] in wanted[name], asset.headers
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.content == (apidocs.STATIC / name).read_bytes()  # the vendored file
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy, policy
    assert "https:" not in policy and "*" not in policy, policy
    assert page.headers["x-frame-options"] == "DENY"
    redirect = httpx.get(url + "/docs/oauth2-redirect", timeout=5)
    assert redirect.status_code == 200 and "https://" not in redirect.text
    assert httpx.get(url + "/redoc", timeout=5).status_code == 404  # ReDoc: not served
    # The admin API behind the page is as closed as before.
    assert httpx.get(url + "/deployments", timeout=5).status_code == 401
    assert httpx.get(url + "/deployments", headers=control_server.headers,
                     timeout=5).status_code == 200


def test_replica(replica_server: Server) -> None:
    run = fuzz(replica_server, CASES + 50, leave_out=[DRAIN])
    assert run.total >= CASES
    assert run.statuses[200] > 0  # the documented examples got through
    assert_healthy(replica_server)


def test_gateway(gateway_server: Server, replica_server: Server) -> None:
    run = fuzz(gateway_server, CASES + 50, leave_out=TABLE_WRITES)
    assert run.total >= CASES
    assert run.statuses[200] > 0
    assert_healthy(gateway_server)
    assert_healthy(replica_server)


def test_control_plane(control_server: Server) -> None:
    run = fuzz(control_server, CASES + 50)
    assert run.total >= CASES
    assert_healthy(control_server)


def test_control_plane_refusals_have_the_stratum_shape(control_server: Server) -> None:
    url, headers = control_server.url, control_server.headers
    r = httpx.post(url + "/deployments/x/scale", json={"replicas": 0}, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "DataError" and "replicas" in r.json()["message"], r.text
    r = httpx.post(url + "/deployments", content=b'{"\xff',
                   headers={**headers, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "BadRequestError", r.text
    r = httpx.put(url + "/health")
    assert r.status_code == 405 and r.json()["error"] == "MethodNotAllowedError", r.text


@pytest.mark.parametrize("limit", [2**63, 10**20, 0, -1])
def test_events_limit_out_of_range_is_a_422(control_server: Server, limit: int) -> None:
    # 2**63 and up were a 500 (SQLite's LIMIT is 64-bit); below 1, no limit at all.
    r = httpx.get(f"{control_server.url}/events?limit={limit}",
                  headers=control_server.headers)
    assert r.status_code == 422 and "limit" in r.json()["message"], r.text
    assert_healthy(control_server)


def test_destructive_admin_routes_leave_processes_alive(
        gateway_server: Server, replica_server: Server) -> None:
    # Last on purpose: these leave the gateway pointing at nowhere and the replica drained.
    predict = f"{gateway_server.url}/v1/models/{MODEL}:predict"
    sample = {"instances": [[0.1, 0.2, 0.3, 0.4]]}

    def still_answers() -> None:  # whatever table went in: a 4xx or 503, never a 500
        r = httpx.post(predict, json=sample, headers=gateway_server.headers, timeout=TIMEOUT)
        assert r.status_code < 500 or r.json()["error"] == "ServingError", r.text

    fuzz(gateway_server, 150, only=TABLE_WRITES, after=still_answers)
    assert_healthy(gateway_server)

    def install(groups: list[dict[str, object]]) -> httpx.Response:
        table = {"deployments": {"*": {"groups": groups}},
                 "secrets": {replica_server.url: REPLICA_SECRET}}
        return httpx.put(gateway_server.url + "/admin/routes", json=table, headers=ADMIN)

    # Found probing by hand (regressions): a replica URL with a port past 65535 was a
    # 500, and so was every request after a table whose weights add up past a float.
    r = install([{"replicas": ["http://127.0.0.1:99999"]}])
    assert r.status_code == 400 and r.json()["error"] == "ConfigError", r.text
    r = install([{"replicas": [replica_server.url], "weight": 1e308}] * 2)
    assert r.status_code == 200, r.text
    for _ in range(5):
        r = httpx.post(predict, json=sample, headers=gateway_server.headers, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
    assert install([{"replicas": [replica_server.url]}]).status_code == 200
    r = httpx.post(predict, json=sample, headers=gateway_server.headers, timeout=TIMEOUT)
    assert r.status_code == 200, r.text  # the table put back serves again
    assert_healthy(gateway_server)

    fuzz(replica_server, 10, only=[DRAIN])
    assert_healthy(replica_server)
    r = httpx.get(replica_server.url + "/v2/health/ready", timeout=5)
    assert r.status_code == 503 and r.json() == {"ready": False}
