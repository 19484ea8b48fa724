"""Replica start-up: from ``python -m stratum.serve`` to ``/v2/health/ready`` answering 200,
and from a replica's SIGKILL to the supervisor's replacement being ready.

Two models (the mnist cnn and the digits mlp, untrained: start-up does not depend on the
weights), each **cold** (no ONNX export cached: the first deploy of a version on a home)
and **cached** (a replacement, a scale-up, a restart). Every figure is the median of
``--rounds`` runs, the variants alternating run by run on the same home:

- **before**: the replica as it started before its start-up was trimmed, reproduced in
  the same run by a ``sitecustomize`` that, in replica processes only, imports what they
  used to (torch through the model zoo, onnxscript for the export cache key, Alembic for
  the migration check, pyarrow through ``stratum.data``) and turns off the two shortcuts
  (a cached export checked against its embedded probe, not the eager network; the
  schema's head read without Alembic). The same code, then, minus the change.
- **after**: the replica as shipped.

Reference rows (no ratio) show the floors: the interpreter alone, ``import torch`` (what
every start paid before), and the imports a replica needs now.

The replacement figure starts two control planes (one per variant, their own homes),
each with a deployment of two replicas, and SIGKILLs one replica at a time, alternating,
timing until the control plane reports the deployment ready again with a new replica.

    .venv/bin/python bench/replica_start.py                     # rounds=5, both models
    .venv/bin/python bench/replica_start.py --rounds 3 --models mlp --kills 0
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stratum.config import Settings, load_settings  # noqa: E402
from stratum.config.child import python_command  # noqa: E402
from stratum.control.discovery import read_record  # noqa: E402
from stratum.models import build_model  # noqa: E402
from stratum.security.tokens import REPLICA_SECRET_ENV, replica_secret  # noqa: E402
from stratum.store import ModelSpec, Store, register_model  # noqa: E402
from tests.integration.gateway_fixtures import (  # noqa: E402
    admin_headers,
    stop_control_plane,
)
from tests.services import free_port  # noqa: E402

T = TypeVar("T")
MODELS = {"cnn": ("mnist", "cnn", [1, 28, 28]), "mlp": ("digits", "mlp", [64])}

BASELINE_SITE = '''\
import sys

if "stratum.serve" in sys.orig_argv:  # replicas only: the control plane stays as it is
    import alembic.command, alembic.runtime.migration, alembic.script  # noqa
    import onnxscript, torch  # noqa
    import stratum.data.dataset, stratum.data.ingest  # noqa
    import stratum.models.torch_predictor, stratum.models.trainable  # noqa
    import stratum.models.exported as _exported
    import stratum.store.db as _db

    assert hasattr(_exported, "from_cache") and hasattr(_db, "_at_head")
    _exported.from_cache = lambda *a, **k: None  # check the cache against the eager net
    _db._at_head = lambda engine: False  # ask Alembic whether to migrate
'''


def register(settings: Settings) -> None:
    store = Store.open(settings)
    torch.manual_seed(0)
    for name, arch, shape in MODELS.values():
        spec = ModelSpec(architecture=arch, input_shape=shape, classes=list(range(10)))
        register_model(store.meta, store.artifacts, name, spec,
                       weights=build_model(arch, shape, 10).state_dict())
    store.close()


def ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/v2/health/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def spawn_to_ready(env: dict[str, str], model: str) -> float:
    """Seconds from spawning a replica as the supervisor does to its readiness answering."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(python_command("stratum.serve", ["--model", f"{model}@1",
                                                             "--port", str(port)]),
                            cwd="/", env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        while not ready(port):
            if proc.poll() is not None:
                raise RuntimeError(f"replica exited {proc.returncode}: "
                                   f"{proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)


def run_python(env: dict[str, str], code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", code], cwd="/", env=env, check=True)
    return time.perf_counter() - t0


def alternate(rounds: int, variants: dict[str, Callable[[], T]]) -> dict[str, list[T]]:
    """Run the variants in turn, reversing the order every round (drift hits both)."""
    out: dict[str, list[T]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(rounds):
        for k in (names if i % 2 == 0 else names[::-1]):
            out[k].append(variants[k]())
    return out


# -- replacement under a real control plane -------------------------------------------------
class Cluster:
    """A home with a control plane and a deployment of two digits-mlp replicas."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.settings = load_settings(home=home, log_level="WARNING")
        register(self.settings)
        self.first_deploy = self.deploy()  # a fresh home: no control plane, no export cached
        self.admin = admin_headers(self.settings)
        self._pids = {r["pid"] for r in self.observed()["replicas"]}

    def cli(self, *args: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("stratum")), "--home",
                        str(self.home), *args], env=self.env, check=True,
                       capture_output=True, timeout=300)
        return time.perf_counter() - t0

    def deploy(self) -> float:
        """Seconds of ``stratum deploy digits@1 --replicas 2`` (it returns once ready)."""
        return self.cli("deploy", "digits@1", "--replicas", "2", "--port", str(free_port()),
                        "--json")

    def redeploy(self) -> float:
        """Undeploy, then time deploying the same version again: its export is cached."""
        self.cli("undeploy", "digits")
        took = self.deploy()
        self._pids = {r["pid"] for r in self.observed()["replicas"]}
        return took

    def observed(self) -> dict[str, Any]:
        import httpx

        rec = read_record(self.settings)
        assert rec is not None, "control plane gone"
        r = httpx.get(f"{rec['url']}/deployments/digits", headers=self.admin, timeout=10)
        r.raise_for_status()
        out: dict[str, Any] = r.json()["observed"]
        return out

    def kill_one(self, timeout: float = 60.0) -> dict[str, float]:
        """SIGKILL a ready replica; seconds until its replacement answers ready itself and
        until the control plane reports the deployment ready again without it."""
        obs = self.observed()
        assert obs["status"] == "ready", obs
        victim = obs["replicas"][0]["pid"]
        t0 = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        times: dict[str, float] = {}
        while time.perf_counter() - t0 < timeout:
            obs = self.observed()
            new = [r for r in obs["replicas"] if r["pid"] != victim
                   and r["pid"] not in self._pids]
            if new and "replica ready" not in times and ready(new[0]["port"]):
                times["replica ready"] = time.perf_counter() - t0
            pids = [r["pid"] for r in obs["replicas"]]
            if obs["status"] == "ready" and len(pids) == 2 and victim not in pids:
                times["deployment ready"] = time.perf_counter() - t0
                times.setdefault("replica ready", times["deployment ready"])
                self._pids = set(pids)
                return times
            time.sleep(0.02)
        raise TimeoutError(f"no replacement after {timeout}s: {obs}")

    def stop(self) -> None:
        stop_control_plane(self.settings)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="runs per figure (median)")
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--kills", type=int, default=5, help="replica SIGKILLs per variant "
                    "(0: skip the control-plane figures)")
    ap.add_argument("--deploys", type=int, default=3, help="fresh homes per variant for "
                    "the first-deploy figure, and redeploys for the cached one")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stratum-start-"))
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(BASELINE_SITE)
    settings = load_settings(home=tmp / "home", log_level="WARNING")
    register(settings)
    base = {**os.environ, **settings.child_env(), REPLICA_SECRET_ENV: replica_secret()}
    base.pop("PYTHONPATH", None)
    envs = {"before": {**base, "PYTHONPATH": str(tmp / "site")}, "after": base}
    cache = settings.home / "cache" / "onnx"
    rows: list[tuple[str, str, dict[str, list[float]]]] = []
    try:
        for key in args.models.split(","):
            model = MODELS[key][0]
            for mode in ("cold", "cached"):
                def run(env: dict[str, str], model: str = model, mode: str = mode) -> float:
                    if mode == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                    return spawn_to_ready(env, model)

                for e in envs.values():  # untimed: page cache warm, export cached, for both
                    spawn_to_ready(e, model)
                got = alternate(args.rounds, {k: partial(run, e) for k, e in envs.items()})
                rows.append((key, mode, got))
                print(f"  {key} {mode}: " + ", ".join(
                    f"{k} {[round(x, 2) for x in v]}" for k, v in got.items()), flush=True)
        refs = alternate(args.rounds, {
            "python -P -c pass": lambda: run_python(base, "pass"),
            "import torch": lambda: run_python(base, "import torch"),
            "a replica's imports now": lambda: run_python(
                base, "import stratum.serve.__main__, stratum.serve.app, onnxruntime"),
        })
        kills: dict[str, list[dict[str, float]]] = {}
        deploys: dict[str, dict[str, list[float]]] = {}
        if args.kills:
            # Their own homes and default settings: no STRATUM_SETTINGS_JSON of the bench's.
            plain = {k: v for k, v in os.environ.items()
                     if k not in ("PYTHONPATH", "STRATUM_SETTINGS_JSON")}
            cenvs = {"before": {**plain, "PYTHONPATH": str(tmp / "site")}, "after": plain}
            clusters: dict[str, Cluster] = {}
            first: dict[str, list[float]] = {k: [] for k in cenvs}
            try:
                for i in range(args.deploys):  # fresh homes, alternating; the last pair stays
                    for k in (list(cenvs) if i % 2 == 0 else list(cenvs)[::-1]):
                        if k in clusters:
                            clusters.pop(k).stop()
                        clusters[k] = Cluster(tmp / f"cluster-{k}-{i}", cenvs[k])
                        first[k].append(clusters[k].first_deploy)
                kills = alternate(args.kills, {k: c.kill_one for k, c in clusters.items()})
                deploys = {"first deploy (fresh home)": first, "redeploy (export cached)":
                           alternate(args.deploys, {k: c.redeploy for k, c in clusters.items()})}
            finally:
                for c in clusters.values():
                    c.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nreplica spawn to /v2/health/ready, median of {args.rounds} alternating runs "
          f"({os.cpu_count()} cores)\n")
    print("| model | export cache | before s | after s | after/before |")
    print("|---|---|---:|---:|---:|")
    for key, mode, got in rows:
        b, a = median(got["before"]), median(got["after"])
        print(f"| {key} | {mode} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    for name, xs in refs.items():
        print(f"| ({name}) | - | | {median(xs):.2f} | |")
    if kills:
        print(f"\nreplica SIGKILL to the deployment ready again (control plane, digits mlp, "
              f"2 replicas, no load), median of {args.kills}\n")
        print("| until | before s | after s | after/before |")
        print("|---|---:|---:|---:|")
        for what in ("replica ready", "deployment ready"):
            b = median([k[what] for k in kills["before"]])
            a = median([k[what] for k in kills["after"]])
            print(f"| {what} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
        print(f"\n`stratum deploy digits@1 --replicas 2` until it returns (ready), median of "
              f"{args.deploys}\n")
        print("| deploy | before s | after s | after/before |")
        print("|---|---:|---:|---:|")
        for what, got_d in deploys.items():
            b, a = median(got_d["before"]), median(got_d["after"])
            print(f"| {what} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
