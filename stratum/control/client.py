"""A client of the control plane's admin API, as the CLI uses it; it starts the control
plane in the background when none is running."""

from __future__ import annotations

import ssl
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

from stratum.config import Settings
from stratum.config.child import start_python
from stratum.control.discovery import read_record
from stratum.control.procs import free_port, port_free
from stratum.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ServingError,
    StratumError,
)
from stratum.security.home import private_home
from stratum.security.tls import client_context
from stratum.security.tokens import ensure_admin_token
from stratum.store import Store
from stratum.store.runtime import RuntimeStore

_BY_STATUS: dict[int, type[StratumError]] = {
    401: AuthError, 403: PermissionDeniedError, 404: NotFoundError, 409: ConflictError,
}


# How long a call waits for a leader when none leads (a start, a failover takes ~1 s).
NO_LEADER_WAIT_S = 15.0


class ControlClient:
    """``api_key``: an admin-scoped key; by default the home's admin token
    (``{home}/admin.token``), made on first use as the control plane would make it.
    ``entry``: the module started when none runs (``python -m ENTRY``); the CLI names the
    process its own layer composes (``stratum.web``: the API with the dashboard)."""

    def __init__(self, settings: Settings, api_key: str | None = None, *,
                 entry: str = "stratum.control") -> None:
        self.settings = settings
        self.entry = entry
        self._api_key = api_key
        self._url: str | None = None
        self._tls: ssl.SSLContext | None = None

    @property
    def verify(self) -> ssl.SSLContext:
        """How the control plane's certificate is checked (``client_tls``); made once."""
        if self._tls is None:
            self._tls = client_context(self.settings.client_tls)
        return self._tls

    @property
    def headers(self) -> dict[str, str]:
        if self._api_key is None:
            store = Store.open(self.settings)
            try:
                self._api_key = ensure_admin_token(self.settings.home, store.meta)
            finally:
                store.close()
        return {"authorization": f"Bearer {self._api_key}"}

    # -- finding or starting the control plane ----------------------------------------------
    def url(self, start: bool = True) -> str:
        if self._url is None:
            rec = read_record(self.settings)
            leader = None if rec is not None else self._leader()
            if rec is not None and self._healthy(rec["url"], wait=5.0):
                self._url = str(rec["url"])
            elif leader is not None and self._healthy(leader, wait=1.0):
                self._url = leader  # another host's home: found through the store
            elif start:
                self._url = self._start()
            else:
                raise ServingError("no control plane is running",
                                   hint="`stratum deploy` starts one")
        return self._url

    def _leader(self) -> str | None:
        """The leader's URL as recorded in the store (a control plane of another home)."""
        store = Store.open(self.settings)
        try:
            found = RuntimeStore(store.meta).leader()
        finally:
            store.close()
        return found.url if found is not None else None

    def _healthy(self, url: str, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            try:
                if httpx.get(url + "/health", timeout=1.0,
                             verify=self.verify).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def _start(self) -> str:
        """Start ``python -P -m ENTRY`` detached (own session, log under home)."""
        cfg = self.settings.control
        port = cfg.port if port_free(cfg.host, cfg.port) else free_port(cfg.host)
        home = private_home(self.settings.home)  # the log below is the first file in it
        (home / "logs").mkdir(parents=True, exist_ok=True)
        with open(home / "logs" / "control.log", "ab") as log:
            proc = start_python(
                self.entry, ["--host", cfg.host, "--port", str(port)],
                env=self.settings.child_env(),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        url = f"{cfg.tls.scheme}://{cfg.host}:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (home / "logs" / "control.log").read_text(errors="replace")[-800:]
                raise ServingError(f"the control plane exited with {proc.returncode}: {tail}")
            if self._healthy(url, wait=0):
                return url
            time.sleep(0.2)
        raise ServingError(f"the control plane did not answer on {url} within 60 s",
                           hint=f"see {home / 'logs' / 'control.log'}")

    # -- calls --------------------------------------------------------------------------------
    def call(self, method: str, path: str, json: Any = None, start: bool = True) -> Any:
        headers = self.headers
        # Nobody leads for a moment (one just started and is taking the lease, or a leader
        # just died): a 503 "NoLeaderError" with retry-after, worth waiting out briefly.
        deadline = time.monotonic() + NO_LEADER_WAIT_S
        while True:
            try:
                # A standby answers 307 to the leader (same method and body).
                r = httpx.request(method, self.url(start) + path, json=json, headers=headers,
                                  timeout=30.0, verify=self.verify, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise ServingError(f"the control plane did not answer: {exc}") from exc
            if r.status_code != 503 or "retry-after" not in r.headers or \
                    time.monotonic() > deadline:
                break
            time.sleep(min(float(r.headers.get("retry-after", "1") or 1), 1.0) / 2)
        if r.status_code >= 400:
            try:
                body = r.json()
                message, hint = body.get("message") or str(body), body.get("hint")
            except ValueError:
                message, hint = r.text, None
            raise _BY_STATUS.get(r.status_code, ServingError)(message, hint=hint)
        return r.json()

    def deploy(self, **request: Any) -> dict[str, Any]:
        out: dict[str, Any] = self.call("POST", "/deployments", request)
        return out

    def wait_ready(self, name: str, generation: int, timeout: float = 300.0,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the deployment serves ``generation`` (or a later one) and is ready;
        raise ServingError with the supervisor's reason when that generation failed."""
        deadline = time.monotonic() + timeout
        while True:
            dep: dict[str, Any] = self.call("GET", f"/deployments/{name}")
            obs = dep.get("observed") or {}
            if progress is not None:
                progress(dep)
            err = obs.get("last_error") or {}
            if err.get("generation", -1) >= generation and (
                    dep["generation"] > generation or obs.get("status") == "failed"):
                raise ServingError(err.get("message", "the deployment failed"),
                                   hint="the previous version keeps serving; "
                                        "see `stratum status`")
            if obs.get("generation", 0) >= generation and obs.get("status") == "ready":
                return dep
            if time.monotonic() > deadline:
                raise ServingError(f"deployment {name} not ready after {timeout:.0f}s",
                                   hint="see `stratum status` and the logs under home/logs")
            time.sleep(0.3)
