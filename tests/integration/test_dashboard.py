"""The dashboard in a real browser against a live system.

One module-wide system: a dataset from a CSV with a column named ``<script>…</script>``,
two trained versions of a model, the control plane the CLI starts (``python -m
stratum.web``: the admin API with the dashboard) deploying the second with two replicas
behind a gateway, real traffic and feedback through that gateway, and one step of the real
online learner on it. Debian's Chromium, headless and driven by Playwright (no browser is
downloaded), logs in with the admin token and visits every page: each loads with no
console error and shows those objects; a screenshot of each goes to ``build/screenshots/``
(printed). A rollback made in the browser reaches the supervisor and the audit log. The
first load time of the dashboard is measured and printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.discovery import read_record
from stratum.data.ingest import ingest
from stratum.store import Store
from stratum.train.config import TrainConfig
from stratum.train.fit import fit
from tests.integration.gateway_fixtures import TUNING, BackgroundLoad, stop_control_plane
from tests.services import free_port, missing_service

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
DOCS_HOST = "stratum.test"  # the control plane by a name that is not localhost (api docs)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1"]
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
EVIL = '<script>alert("x")</script>'  # a column name: it must render as text


class System:
    def __init__(self, home: Path, settings: Settings, gateway: str, run_id: str) -> None:
        self.home, self.settings, self.gateway, self.run_id = home, settings, gateway, run_id
        rec = read_record(settings)
        assert rec is not None
        self.url = str(rec["url"])
        self.token = (home / "admin.token").read_text().strip()

    def api(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"authorization": f"Bearer {self.token}"},
                      timeout=10)
        r.raise_for_status()
        return r.json()


def _cli(home: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["--home", str(home), *args], env=TUNING)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


def _data(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1).astype(int)
    with path.open("w") as f:
        quoted = '"' + EVIL.replace('"', '""') + '"'  # CSV quoting of a name with quotes
        f.write(f"{quoted},b,c,label\n")
        for row, label in zip(x, y, strict=True):
            f.write(f"{row[0]:.4f},{row[1]:.4f},{row[2]:.4f},{label}\n")


def _traffic(gateway: str, n: int) -> None:
    """``n`` predicts through the gateway, then feedback (the true label) on each, once
    the replicas have logged their inputs (they flush every few milliseconds)."""
    rng = np.random.default_rng(1)
    sent = []
    with httpx.Client(base_url=gateway, timeout=10) as c:
        for _ in range(n):
            x = rng.normal(size=3)
            r = c.post("/v1/models/tabular:predict", json={"instances": [x.tolist()]})
            assert r.status_code == 200, r.text
            sent.append((r.headers["x-request-id"], int(x[0] + x[1] > 0) + int(x[2] > 1)))
        time.sleep(0.5)
        for rid, label in sent:
            f = c.post("/v1/models/tabular/feedback", json={"request_id": rid, "label": label})
            assert f.status_code < 300, f.text


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("dashboard")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in TUNING.items():
            mp.setenv(k, v)
        settings = load_settings(home=home)
    _data(root / "data.csv")
    store = Store.open(settings)
    try:
        ingest(str(root / "data.csv"), "tabular", store)
        cfg = TrainConfig.model_validate({
            "dataset": "tabular@latest", "name": "tabular", "epochs": 3, "batch_size": 32,
            "model": {"name": "mlp", "params": {"hidden": [16]}}})
        run_id = str(fit(cfg, settings, store=store).run_id)
        fit(cfg.model_copy(update={"seed": 1}), settings, store=store)
        store.meta.set_alias("tabular", "production", 2, reason="test: the champion")
    finally:
        store.close()
    port = free_port()
    try:
        _cli(home, "deploy", "tabular@1", "--port", str(port), "--json")
        # v1 becomes what rollback goes to
        _cli(home, "deploy", "tabular@2", "--replicas", "2", "--json")
        s = System(home, settings, f"http://127.0.0.1:{port}", run_id)
        _traffic(s.gateway, 60)
        _learn(settings, s.gateway)
        yield s
    finally:
        stop_control_plane(settings)


def _learn(settings: Settings, gateway: str) -> None:
    """The real online learner, in this process: a drift window over the traffic after it
    started, and a challenger from all the feedback."""
    from stratum.online.learner import Learner

    online = settings.online.model_copy(update={"drift_window": 50})
    store = Store.open(settings)
    try:
        learner = Learner(settings.model_copy(update={"online": online}), store, "tabular")
        _traffic(gateway, 60)
        learner.step()
        assert learner.drain() is not None, "the learner made no challenger"
    finally:
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing_service("Playwright for Python", exc)
    if not os.access(CHROMIUM, os.X_OK):
        missing_service(f"Chromium at {CHROMIUM} (apt-get install chromium)", "not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A logged-in browser page that records console errors and failed scripts."""

    def __init__(self, browser: Any, system: System) -> None:
        self.ctx = browser.new_context(viewport={"width": 1400, "height": 900})
        self.page = self.ctx.new_page()
        self.base = system.url
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def login(self, token: str) -> dict[str, float]:
        """Log in from the dashboard's root, in a fresh browser (empty cache); the load times
        (ms, to the load event, redirects included) of the login form and of the overview
        it leads to."""
        self.page.goto(self.base + "/")  # → /ui/ → the login form
        assert "/ui/login" in self.page.url
        login_ms = self._load_ms()
        self.page.fill("input[name=token]", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("load")
        assert self.page.url.endswith("/ui/"), self.page.url
        return {"login_page_ms": login_ms, "overview_after_login_ms": self._load_ms()}

    def _load_ms(self) -> float:
        return float(self.page.evaluate(
            "() => { const n = performance.getEntriesByType('navigation')[0];"
            " return n.loadEventEnd - n.startTime; }"))

    def visit(self, path: str, shot: str, *, wait_ms: int = 0, status: int = 200) -> Any:
        """Go to ``path``; no console error but the browser's note of the page's own
        status when it is an expected error (``status``)."""
        self.errors.clear()
        response = self.page.goto(self.base + path, wait_until="load")
        assert response is not None and response.status == status, (path, response)
        if wait_ms:
            self.page.wait_for_timeout(wait_ms)
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        errors = [e for e in self.errors if status == 200 or f"status of {status}" not in e]
        assert not errors, f"{path}: console errors {errors}"
        assert not self.dialogs, f"{path}: a script ran: {self.dialogs}"
        return response

    def text(self, selector: str = "main") -> str:
        return str(self.page.inner_text(selector))


@pytest.fixture(scope="module")
def page(browser: Any, system: System) -> Iterator[Page]:
    p = Page(browser, system)
    try:
        first = p.login(system.token)
        print(f"\ndashboard first load: login form {first['login_page_ms']:.0f} ms (cold "
              f"cache), overview after login {first['overview_after_login_ms']:.0f} ms; "
              f"screenshots in {SHOTS}")
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / "first-load.json").write_text(json.dumps(first))
        yield p
    finally:
        p.ctx.close()


def test_every_page_loads_and_shows_the_real_objects(page: Page, system: System) -> None:
    page.visit("/ui/", "overview", wait_ms=3500)  # one live refresh: rates appear
    overview = page.text()
    assert "tabular" in overview and "ready" in overview
    assert page.page.locator("#deployments tr").count() == 2  # header + tabular
    assert page.page.locator("#learners").count() == 1

    page.visit("/ui/datasets", "datasets")
    assert "tabular" in page.text()
    page.visit("/ui/datasets/tabular", "dataset")
    schema = page.text("#schema")
    assert EVIL in schema
    assert page.page.locator("#shards tr").count() == 1 + 8  # header + 8 shards
    assert page.page.locator("#schema script").count() == 0  # text, not an element

    page.visit("/ui/models", "models")
    assert "tabular" in page.text()
    page.visit("/ui/models/tabular", "model")
    lineage = str(page.page.locator("#lineage").text_content())  # SVG: no inner_text
    assert "tabular v1" in lineage and "tabular v2" in lineage and "run " in lineage
    assert "tabular@" in lineage  # the dataset version both were trained on
    assert page.page.locator(".chart canvas").count() >= 1  # learning curves drawn
    assert page.page.locator("#online-gates tr").count() >= 2  # the learner's decision

    page.visit("/ui/runs", "runs")
    assert system.run_id[:8] in page.text("#runs")
    page.visit(f"/ui/runs/{system.run_id}", "run")
    assert page.page.locator(".chart canvas").count() >= 1  # per epoch (and per step)
    assert "restarts" in page.text(".progress")

    page.visit("/ui/deployments", "deployments")
    assert "tabular@v2" in page.text("#deployments")
    load = BackgroundLoad(system.gateway, "tabular", concurrency=4,
                          body={"instances": [[0.1, 0.2, 0.3]]})
    try:  # the live figures and charts follow the traffic (polled every 2 s)
        page.visit("/ui/deployments/tabular", "deployment", wait_ms=4500)
        figures = page.text(".live-figures")
    finally:
        assert load.stop().ok > 0
    rps = re.search(r"([\d.,]+) req/s", figures)
    assert rps is not None and float(rps.group(1).replace(",", "")) > 0, figures
    assert "p99 -" not in figures, figures  # latency measured
    replicas = page.text("#replicas")
    assert replicas.count("ready") == 2 and "v2" in replicas
    assert page.page.locator(".chart canvas").count() == 4  # rps, latency, batch, errors

    page.visit("/ui/learner?model=tabular", "learner")
    learner = page.text()
    assert "tabular" in page.text("#learners")
    assert page.page.locator("#challengers tr").count() >= 2
    assert page.page.locator("#drift tr").count() >= 2  # a drift window, per feature

    page.visit("/ui/events?kind=deployment.*", "events")
    assert "deployment.wanted" in page.text("#event-rows") and learner


def test_rollback_from_the_browser(page: Page, system: System) -> None:
    page.visit("/ui/deployments/tabular", "deployment-before-rollback")
    page.page.click("#rollback")
    page.page.wait_for_load_state("load")
    assert "Roll back tabular?" in page.text() and "to v1" in page.text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(SHOTS / "rollback-confirm.png"), full_page=True)
    page.page.click("#confirm")
    page.page.wait_for_load_state("load")
    assert "Rolled back" in page.text(), page.text()
    assert system.api("/deployments/tabular")["spec"]["version"] == 1
    deadline = time.monotonic() + 90
    while True:  # the supervisor rolls the replicas onto v1; the page shows it
        obs = system.api("/deployments/tabular")["observed"]
        versions = {r["version"] for r in obs.get("replicas", []) if r["state"] == "ready"}
        if obs.get("status") == "ready" and versions == {1}:
            break
        assert time.monotonic() < deadline, obs
        time.sleep(0.5)
    page.visit("/ui/deployments/tabular", "deployment-after-rollback", wait_ms=2500)
    assert "v2" not in page.text("#replicas") and "v1" in page.text("#replicas")
    page.visit("/ui/events?source=audit&action=rollback", "audit")
    audit = page.text("#audit-rows")
    assert "rollback" in audit and "admin-token" in audit and "200" in audit


def test_missing_objects_are_404_pages(page: Page) -> None:
    for path in ("/ui/models/nosuch", "/ui/datasets/nosuch", "/ui/deployments/nosuch",
                 "/ui/runs/0000", "/ui/learner?model=nosuch", "/ui/no/such/page"):
        page.visit(path, "not-found", status=404)
        assert "Traceback" not in page.text() and "Not found" in page.text()
    page.visit("/ui/models/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "not-found-script",
               status=404)
    assert "<script>alert(1)</script>" in page.text()


def test_actions_need_the_session_and_its_csrf_token(system: System) -> None:
    url = system.url
    with httpx.Client(base_url=url, timeout=10) as anon:
        r = anon.get("/ui/deployments")
        assert r.status_code == 303 and "/ui/login" in r.headers["location"]
        r = anon.post("/ui/deployments/tabular/scale", data={"replicas": "1", "confirm": "yes"})
        assert r.status_code == 401
        r = anon.post("/ui/login", data={"token": "sk_nope_nope", "next": "/ui/"})
        assert r.status_code == 401 and "not valid" in r.text
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.post("/ui/login", data={"token": system.token, "next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/"  # never off-site
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        before = system.api("/deployments/tabular")["generation"]
        r = c.post("/ui/deployments/tabular/scale",
                   data={"replicas": "1", "confirm": "yes", "csrf": "forged"})
        assert r.status_code == 403
        r = c.post("/ui/deployments/tabular/scale", headers={"origin": "https://evil.example"},
                   data={"replicas": "1", "confirm": "yes", "csrf": "x"})
        assert r.status_code == 403
        assert system.api("/deployments/tabular")["generation"] == before  # nothing changed
        page = c.get("/ui/deployments/tabular")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"


def test_the_api_docs_render_offline(browser: Any, system: System) -> None:
    """The control plane's /docs (Swagger UI, served from the package) in Chromium, by a
    host name that is not localhost (Swagger UI skips its online validator only for
    localhost): every operation of /openapi.json is drawn, "Try it out" on /health gets
    its answer, no console error, and no request goes to another host (any that tried is
    recorded and refused before it leaves)."""
    url = urlsplit(system.url)
    assert url.hostname == "127.0.0.1", system.url
    origin = f"{DOCS_HOST}:{url.port}"
    base = f"{url.scheme}://{origin}"
    document = httpx.get(system.url + "/openapi.json", timeout=10).json()
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    operations = sum(1 for item in document["paths"].values() for m in item if m in methods)
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    elsewhere: list[str] = []
    errors: list[str] = []

    def only_here(route: Any) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    try:
        ctx.route("**/*", only_here)
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        response = page.goto(base + "/docs", wait_until="load")  # no login: it is public
        assert response is not None and response.status == 200
        page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
        assert page.locator(".swagger-ui .opblock").count() == operations >= 10
        assert "Stratum control plane" in page.inner_text(".swagger-ui .info .title")
        assert page.locator(".swagger-ui .btn.authorize").count() == 1  # the admin schemes
        health = page.locator(".opblock-get", has=page.locator('[data-path="/health"]'))
        health.locator(".opblock-summary").click()
        health.locator("button.try-out__btn").click()
        health.locator("button.execute").click()
        answer = health.locator(".live-responses-table .response .response-col_status")
        answer.wait_for(timeout=15_000)
        assert answer.inner_text().strip() == "200"
        assert '"role": "leader"' in health.locator(".live-responses-table").inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "api-docs.png"), full_page=True)
        assert not errors, f"/docs: console errors {errors}"
        assert not elsewhere, f"/docs asked other hosts: {elsewhere}"
    finally:
        ctx.close()


def test_a_run_in_training_shows_its_workers_and_a_restart(page: Page, system: System,
                                                           tmp_path: Path) -> None:
    """A ddp run of two workers, live: the page shows both running; one SIGKILLed, the
    launcher restarts the group from its checkpoint and the page counts the restart."""
    from stratum.train.launcher import run_dir, worker_pids

    cfg = tmp_path / "long.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "dataset": "tabular@latest", "model": {"name": "mlp", "params": {"hidden": [16]}},
        "epochs": 500, "batch_size": 8, "checkpoint_every": 20, "log_every_s": 0.5}))
    log = tmp_path / "train.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stratum.cli.main", "--home", str(system.home), "train",
             str(cfg), "--workers", "2", "--name", "tabular-live"],
            env={**os.environ, **TUNING}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        store = Store.open(system.settings)
        try:
            deadline = time.monotonic() + 120
            while True:
                runs = store.meta.runs("tabular-live", limit=1)
                folder = run_dir(system.settings, runs[0].id) if runs else None
                if folder is not None and len(worker_pids(folder)) == 2 and \
                        (folder / "progress.json").exists():
                    break
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.3)
        finally:
            store.close()
        run_id, pids = runs[0].id, worker_pids(folder)
        page.visit(f"/ui/runs/{run_id}", "run-live")
        assert page.text("#workers").count("running") == 2
        assert page.text("#restarts") == "0"
        os.kill(pids[1], signal.SIGKILL)
        page.page.wait_for_function(  # the live part refreshes every 2 s
            "() => document.querySelector('#restarts').textContent.trim() === '1' && "
            "document.querySelector('#workers').textContent.split('running').length === 3",
            timeout=90_000)
        assert str(pids[1]) not in page.text("#workers")  # the new group's pids
        # The loss curve streams in (the page was rendered before any metric was stored).
        page.page.wait_for_function(
            "() => document.querySelectorAll('.chart canvas').length >= 1", timeout=30_000)
        page.page.screenshot(path=str(SHOTS / "run-live-restarted.png"), full_page=True)
        assert not page.errors, page.errors
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: the run is marked stopped
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
