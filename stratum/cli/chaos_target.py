"""The deployment ``stratum chaos`` works on, seen and acted on from outside as an operator
would: the control plane's admin API (``ControlClient``), the deployment's documents in the
store (wanted spec; observed pids, ports and status), signals to processes, and the time
things take.

A pid read from the observed document is signalled only after its command line says it is
the Stratum process it should be (``control.adopt.runs``: the module and the port), so a
recycled pid is never hit. Whatever a scenario changes in the wanted state it puts back
with ``restore`` (version, alias following, canary, shadow, replica count or autoscaling,
gateways, policy).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from stratum.cli.context import control_client
from stratum.config import Settings
from stratum.config.child import start_python
from stratum.control.adopt import runs
from stratum.control.discovery import read_record
from stratum.control.procs import Proc
from stratum.errors import ConflictError
from stratum.security.tls import client_context
from stratum.store import Store
from stratum.store.runtime import RuntimeStore

POLL_S = 0.1


class NotRecovered(Exception):
    """A wait ran out: the deployment did not get where it should within the timeout."""


def alive(pid: int) -> bool:
    return Proc(pid).alive()  # a zombie (dead, not reaped) counts as gone


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:
        return []


class Target:
    """``on_poll(what)`` is called on every poll of a wait (progress)."""

    def __init__(self, settings: Settings, name: str,
                 on_poll: Callable[[str], None] | None = None) -> None:
        self.settings, self.name = settings, name
        self.on_poll = on_poll or (lambda _what: None)
        self.store = Store.open(settings)
        self.client = control_client(settings)
        self.original: dict[str, Any] = dict(self.doc()["spec"])
        self.verify = client_context(settings.client_tls)

    def close(self) -> None:
        self.store.close()

    # -- what the store says ------------------------------------------------------------------
    def doc(self) -> dict[str, Any]:
        d = self.store.meta.deployment(self.name)  # NotFoundError names a missing one
        return {"generation": d.generation, "status": d.status, "spec": d.spec or {},
                "observed": d.observed or {}}

    @property
    def model(self) -> str:
        return str(self.original["model"])

    def url(self) -> str:
        gw = self.doc()["observed"].get("gateway") or {}
        port = gw.get("port") or self.original["port"]
        return str(gw.get("url") or
                   f"{self.settings.gateway.tls.scheme}://127.0.0.1:{port}")

    def replicas(self, state: str = "ready") -> list[dict[str, Any]]:
        obs = self.doc()["observed"]
        return [r for r in obs.get("replicas", []) if r.get("state") == state]

    def gateways(self) -> list[dict[str, Any]]:
        return [g for g in self.doc()["observed"].get("gateways", []) if g.get("live")]

    def settled(self, gone: set[int] | frozenset[int] = frozenset()) -> bool:
        """Ready on the wanted generation (every wanted replica ready, every gateway live,
        routes acknowledged), and none of ``gone`` among its processes any more."""
        d = self.doc()
        obs = d["observed"]
        if d["status"] != "ready" or obs.get("generation", -1) < d["generation"]:
            return False
        pids = {int(r["pid"]) for r in obs.get("replicas", [])} | \
            {int(g["pid"]) for g in obs.get("gateways", [])}
        return not pids & set(gone)

    def last_event_id(self) -> int:
        """A mark in the event log (ids only grow): ``events_since`` reads past it."""
        rows = self.store.meta.events(limit=1)
        return rows[0].id if rows else 0

    def events_since(self, mark: int, kind: str, subject: str | None = None,
                     ) -> list[dict[str, Any]]:
        """Payloads of ``kind`` events about the deployment (or ``subject``), newest first."""
        return [e.payload for e in self.store.meta.events(subject=subject or self.name,
                                                          kind=kind, after_id=mark)]

    def versions(self) -> list[int]:
        return sorted(mv.version for mv in self.store.meta.model_versions(self.model))

    def other_version(self) -> int | None:
        """The newest registered version other than the one deployed."""
        others = [v for v in self.versions() if v != int(self.original["version"])]
        return max(others) if others else None

    def model_spec(self) -> dict[str, Any]:
        return dict(self.store.meta.model_version(self.model, self.original["version"]).spec)

    # -- waiting ---------------------------------------------------------------------------
    def wait(self, what: str, check: Callable[[], bool], timeout: float) -> float:
        """Poll ``check`` until true; the seconds it took, or ``NotRecovered``. A check
        that raises (a store restarting, a control plane not up yet) counts as false."""
        t0 = time.monotonic()
        last = ""
        while True:
            try:
                if check():
                    return time.monotonic() - t0
            except Exception as exc:
                last = f" (last: {type(exc).__name__}: {str(exc)[:120]})"
            self.on_poll(what)
            if time.monotonic() - t0 > timeout:
                raise NotRecovered(f"{what}: not within {timeout:.0f} s{last}")
            time.sleep(POLL_S)

    def wait_settled(self, timeout: float, gone: set[int] | frozenset[int] = frozenset(),
                     what: str = "ready again") -> float:
        return self.wait(what, lambda: self.settled(gone), timeout)

    # -- acting ----------------------------------------------------------------------------
    @staticmethod
    def signal(pid: int, module: str, port: int | None, sig: signal.Signals,
               *aliases: str) -> None:
        """``sig`` to ``pid`` once it is checked to be ``python -m module --port port``
        (or one of ``aliases`` for ``module``)."""
        ok = runs(pid, module, port) if port is not None else \
            any(m in _argv(pid) for m in (module, *aliases))
        if not ok:
            raise ConflictError(f"pid {pid} is not the {module} process the deployment "
                                "lists (it exited meanwhile, or the pid was reused)")
        os.kill(pid, sig)

    def deploy(self, **request: Any) -> int:
        """A deploy through the control plane; the generation it wrote."""
        return int(self.client.deploy(name=self.name, **request)["generation"])

    def call(self, method: str, path: str, body: Any = None) -> int:
        return int(self.client.call(method, path, body)["generation"])

    def set_alias(self, alias: str, version: int) -> None:
        self.store.meta.set_alias(self.model, alias, version, reason="stratum chaos")

    def restore(self, timeout: float) -> bool:
        """Put the wanted state back as it was when chaos started; whether it had to."""
        o, now = self.original, self.doc()["spec"]
        if _essential(o) == _essential(now):
            return False
        ref = o.get("follow") or str(o["version"])
        if not o.get("follow") and self._resolves(o["ref"], int(o["version"])):
            ref = o["ref"]  # as it was written, e.g. mnist@production pinned
        req: dict[str, Any] = {"model": f"{self.model}@{ref}", "follow": bool(o.get("follow")),
                               "gateways": o.get("gateways"), "policy": o.get("policy")}
        if c := o.get("canary"):
            req["canary"] = f"{self.model}@{c['version']}:{c['percent']:g}"
        if s := o.get("shadow"):
            req["shadow"] = f"{self.model}@{s['version']}"
        if a := o.get("autoscale"):
            req.update(min_replicas=a["min_replicas"], max_replicas=a["max_replicas"],
                       target_inflight=a["target_inflight"],
                       scale_down_cooldown_s=a["scale_down_cooldown_s"])
        else:
            req["replicas"] = o["replicas"]
        gen = self.deploy(**req)
        self.wait("the wanted state restored",
                  lambda: self.doc()["generation"] >= gen and self.settled(), timeout)
        return True

    def _resolves(self, ref: str, version: int) -> bool:
        try:
            return int(self.store.meta.model_version(self.model, ref).version) == version
        except Exception:
            return False

    # -- the control plane -----------------------------------------------------------------
    def leader(self) -> dict[str, Any] | None:
        """This home's leading control plane: pid, URL and term (from the store)."""
        rec = read_record(self.settings)
        row = RuntimeStore(self.store.meta).leader()
        if rec is None:
            return None
        return {"pid": int(rec["pid"]), "url": str(rec["url"]),
                "term": row.term if row is not None else 0}

    def leads_anew(self, old_term: int, old_pid: int) -> bool:
        """A control plane other than ``old_pid`` took the lead after term ``old_term``
        and answers as the leader."""
        row = RuntimeStore(self.store.meta).leader()
        if row is None or row.term <= old_term or row.pid == old_pid:
            return False
        r = httpx.get(row.url + "/health", timeout=1.0, verify=self.verify)
        return bool(r.status_code == 200 and r.json().get("role") == "leader")

    def leading(self) -> bool:
        """Whether the control plane the store names as leader answers as one."""
        row = RuntimeStore(self.store.meta).leader()
        if row is None:
            return False
        r = httpx.get(row.url + "/health", timeout=1.0, verify=self.verify)
        return bool(r.status_code == 200 and r.json().get("role") == "leader")

    def connect(self) -> None:
        """Find the leading control plane afresh, or start one (detached) when none
        answers: what any CLI command does."""
        self.client = control_client(self.settings)
        self.client.url()

    # -- the online learner ----------------------------------------------------------------
    def learners(self) -> list[tuple[int, list[str]]]:
        """``(pid, options)`` of each ``stratum learn MODEL`` of this home on this host."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            argv = _argv(int(entry.name))
            if not any(a.endswith(("stratum", "stratum.cli.main")) for a in argv[:4]):
                continue
            try:
                i = argv.index("learn")
            except ValueError:
                continue
            if argv[i + 1:i + 2] == [self.model] and self._same_home(int(entry.name), argv):
                found.append((int(entry.name), argv[i + 2:]))
        return found

    @staticmethod
    def owner(pid: int) -> int | None:
        """The ``stratum up`` that started ``pid``, if one did: it stops everything it
        started when its learner exits."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                parent = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        argv = _argv(parent)
        ours = any(a.endswith(("stratum", "stratum.cli.main")) for a in argv[:4])
        return parent if ours and "up" in argv else None

    def _same_home(self, pid: int, argv: list[str]) -> bool:
        import orjson

        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text(
                errors="replace").split("\0") if "=" in kv)
        except OSError:
            return False
        if "--home" in argv[:-1]:
            home = Path(argv[argv.index("--home") + 1])
        elif "STRATUM_SETTINGS_JSON" in env:
            home = Path(orjson.loads(env["STRATUM_SETTINGS_JSON"]).get("home", ".stratum"))
        else:
            home = Path(env.get("STRATUM_HOME", ".stratum"))
        return (cwd / home.expanduser()).resolve() == self.settings.home.resolve()

    def start_learner(self, options: list[str]) -> int:
        """``stratum learn MODEL OPTIONS`` again, detached, logging where ``up`` does."""
        logs = self.settings.home.expanduser().resolve() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "learner.log", "ab") as out:
            proc = start_python("stratum.cli.main", ["learn", self.model, *options],
                                env=self.settings.child_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        return proc.pid


def _essential(spec: dict[str, Any]) -> dict[str, Any]:
    """What ``restore`` puts back (not ``ref`` spelling, ``previous`` or a scaled count)."""
    def pick(d: dict[str, Any] | None, *keys: str) -> tuple[Any, ...] | None:
        return None if not d else tuple(d.get(k) for k in keys)

    return {"version": spec.get("version"), "follow": spec.get("follow"),
            "canary": pick(spec.get("canary"), "version", "percent"),
            "shadow": pick(spec.get("shadow"), "version"),
            "replicas": None if spec.get("autoscale") else spec.get("replicas"),
            "autoscale": spec.get("autoscale"), "gateways": spec.get("gateways", 1),
            "policy": spec.get("policy"), "port": spec.get("port")}


__all__ = ["NotRecovered", "Target", "alive"]
