"""Serving benchmark: the in-process forward limit, then one replica and the gateway with
two replicas, at 1 and 64 concurrent single-sample OIP JSON requests.

Two limits are measured: the raw PyTorch forward pass of the network as trained (NCHW,
eager) — the baseline the targets are set against — and the forward pass the replica
actually runs (its runtime: by default the net exported to ONNX Runtime, 4-5x faster for
the cnn on CPU). Ratios are printed against both. With ``--repeat N`` each HTTP figure is
the median of N wrk runs.

    .venv/bin/python bench/serve.py                 # both models, gateway if available
    .venv/bin/python bench/serve.py --models cnn --duration 5 --no-gateway
    .venv/bin/python bench/serve.py --models cnn --security --repeat 3
        # + the gateway four ways: auth off, keys, keys + TLS, keys + TLS + mTLS to replicas

Load comes from wrk (C, one thread, a Lua script that prints a JSON summary), so the load
generator spends no Python time of its own: `apt-get install -y wrk`. Weights are
untrained — throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stratum.config import (  # noqa: E402
    ClientTlsSettings,
    Settings,
    TlsSettings,
    load_settings,
)
from stratum.models import build_model  # noqa: E402
from stratum.security import generate_key, hash_key  # noqa: E402
from stratum.security.certs import make_tls  # noqa: E402
from stratum.security.tls import client_context  # noqa: E402
from stratum.security.tokens import replica_secret  # noqa: E402
from stratum.serve.runtime import load_runtime  # noqa: E402
from stratum.store import (  # noqa: E402
    MetadataStore,
    ModelSpec,
    Store,
    load_model,
    register_model,
)
from tests.services import free_port, started  # noqa: E402

MODELS = {  # bench name -> (registered name, architecture, input shape)
    "cnn": ("mnist", "cnn", [1, 28, 28]),
    "mlp": ("digits", "mlp", [64]),
}
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
REPEAT = 1  # set from --repeat
# A measured path: (env, model, body, lua, seconds, logs) -> {connections: figures}
Path_fn = Callable[..., dict[int, dict[str, float]]]

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
local secret = os.getenv("BENCH_SECRET")  -- straight to a replica: its deployment secret
if secret and secret ~= "" then wrk.headers["x-stratum-replica-secret"] = secret end
local key = os.getenv("BENCH_KEY")  -- through a gateway with gateway.require_auth on
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    '\nBENCH {"requests": %d, "duration_us": %d, "errors": %d, "non2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    s.requests, s.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def in_process_limit(forward: Callable[[np.ndarray], np.ndarray], shape: list[int],
                     seconds: float) -> dict[int, float]:
    """Samples/s of ``forward`` (numpy in, probabilities out) at each batch size, all cores,
    no HTTP: the best of three windows per batch size."""
    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[int, float] = {}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for b in [b for _ in range(REPEAT) for b in BATCHES]:
            x = rng.random((b, *shape), dtype=np.float32)
            for _ in range(3):
                forward(x)
            for _ in range(3):
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds / 3:
                    forward(x)
                    n += b
                out[b] = max(out.get(b, 0.0), n / (time.perf_counter() - t0))
    return out


def forwards(settings: Settings, model: str, arch: str, shape: list[int]
             ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The raw PyTorch forward pass (the network as trained, NCHW) and the forward pass the
    replica runs (its runtime, loaded from the registry: ONNX Runtime by default)."""
    store = Store.open(settings)
    loaded = load_model(store.meta, store.artifacts, model, "1")
    store.close()
    net = build_model(arch, shape, 10).eval()
    net.load_state_dict(loaded.torch_state_dict())
    runtime = load_runtime(loaded, settings.serve)

    def raw(x: np.ndarray) -> np.ndarray:
        return torch.softmax(net(torch.from_numpy(x)), 1).numpy()

    return {"raw": raw, "runtime": runtime.predict}


def register(settings: Settings) -> None:
    store = Store.open(settings)
    torch.manual_seed(0)
    for name, arch, shape in MODELS.values():
        net = build_model(arch, shape, 10)
        spec = ModelSpec(architecture=arch, input_shape=shape, classes=list(range(10)))
        register_model(store.meta, store.artifacts, name, spec, weights=net.state_dict())
    store.close()


def body_file(tmp: Path, name: str, shape: list[int]) -> Path:
    rng = np.random.default_rng(0)
    data = [round(float(v), 4) for v in rng.random(math.prod(shape))]
    doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, *shape],
                       "data": data}]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def wrk(url: str, body: Path, lua: Path, conns: int, seconds: float,
        secret: str = "", key: str = "") -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
           "-s", str(lua), url]
    res = subprocess.run(cmd, env={**os.environ, "BENCH_BODY": str(body),
                                   "BENCH_SECRET": secret, "BENCH_KEY": key},
                         capture_output=True, text=True, check=True)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("BENCH "))
    s = json.loads(line[6:])
    return {"rps": s["requests"] / (s["duration_us"] / 1e6), "p50_ms": s["p50_us"] / 1e3,
            "p99_ms": s["p99_us"] / 1e3, "failed": s["errors"] + s["non2xx"]}


def measure(url: str, body: Path, lua: Path, seconds: float,
            secret: str = "", key: str = "") -> dict[int, dict[str, float]]:
    wrk(url, body, lua, 64, 2, secret, key)  # warm: connections, allocator, branch predictors
    out = {}
    for c in (1, 64):
        runs = sorted((wrk(url, body, lua, c, seconds, secret, key) for _ in range(REPEAT)),
                      key=lambda r: r["rps"])
        out[c] = runs[len(runs) // 2]  # the median run by req/s, with its own latencies
    return out


def replica_cmd(model: str, port: int) -> list[str]:
    return [sys.executable, "-m", "stratum.serve", "--model", f"{model}@1", "--port", str(port)]


def run_replica(env: dict[str, str], model: str, body: Path, lua: Path, seconds: float,
                logs: Path) -> dict[int, dict[str, float]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(replica_cmd(model, port), ready_url=base + "/v2/health/ready", env=env,
                 log=logs / f"replica-{model}.log"):
        return measure(f"{base}/v2/models/{model}/infer", body, lua, seconds,
                       env["STRATUM_REPLICA_SECRET"])


@contextmanager
def gateway_stack(env: dict[str, str], model: str, logs: Path, tag: str = "",
                  settings: Settings | None = None) -> Iterator[str]:
    """Two replicas behind a static gateway; yields the gateway's base URL. ``settings``
    (else the bench's, in ``env``) decides auth and TLS: https replicas under
    ``serve.tls``, an https gateway under ``gateway.tls``."""
    rscheme = gscheme = "http"
    probe: Any = True
    if settings is not None:
        env = {**env, **settings.child_env()}
        rscheme, gscheme = settings.serve.tls.scheme, settings.gateway.tls.scheme
        probe = client_context(settings.client_tls)
    ports = [free_port(), free_port()]
    urls = [f"{rscheme}://127.0.0.1:{p}" for p in ports]
    with ExitStack() as stack:
        for i, (port, url) in enumerate(zip(ports, urls, strict=True)):
            stack.enter_context(started(
                replica_cmd(model, port), ready_url=url + "/v2/health/ready", env=env,
                log=logs / f"r{i}-{model}{tag}.log", verify=probe))
        gport = free_port()
        cmd = [sys.executable, "-m", "stratum.gateway", "--port", str(gport)]
        for u in urls:
            cmd += ["--replica", u]
        gbase = f"{gscheme}://127.0.0.1:{gport}"
        stack.enter_context(started(cmd, ready_url=gbase + "/v2/health/ready", env=env,
                                    log=logs / f"gateway-{model}{tag}.log", verify=probe))
        yield gbase


def run_gateway(env: dict[str, str], model: str, body: Path, lua: Path, seconds: float,
                logs: Path) -> dict[int, dict[str, float]]:
    with gateway_stack(env, model, logs) as gbase:
        return measure(f"{gbase}/v2/models/{model}/infer", body, lua, seconds)


def security_paths(settings: Settings, tmp: Path) -> tuple[str, list[tuple[str, Settings]]]:
    """The gateway path four ways: auth off; API keys on (a predict key registered in the
    bench's store, on every request); keys + TLS between clients and the gateway; keys +
    TLS + mutual TLS between the gateway and its replicas. Returns the key and the paths."""
    key, key_id = generate_key()
    meta = MetadataStore.open(str(settings.metadata_url))
    meta.add_api_key(key_id, "bench", hash_key(key), ["predict"])
    meta.close()
    files = make_tls(tmp / "tls")
    tls = files.settings(mutual=True)
    keys = settings.model_copy(update={
        "gateway": settings.gateway.model_copy(update={"require_auth": True})})
    gateway_tls = TlsSettings(**tls["gateway"]["tls"])  # type: ignore[index]
    with_tls = keys.model_copy(update={
        "gateway": keys.gateway.model_copy(update={"tls": gateway_tls}),
        "client_tls": ClientTlsSettings(ca_file=files.ca_cert)})
    mutual = with_tls.model_copy(update={
        "serve": with_tls.serve.model_copy(update={
            "tls": TlsSettings(**tls["serve"]["tls"])}),  # type: ignore[index]
        "client_tls": ClientTlsSettings(**tls["client_tls"])})  # type: ignore[arg-type]
    return key, [("auth off", settings), ("keys", keys), ("keys + TLS", with_tls),
                 ("keys + TLS + mTLS", mutual)]


def run_security(env: dict[str, str], model: str, body: Path, lua: Path, seconds: float,
                 logs: Path, settings: Settings) -> dict[str, dict[int, dict[str, float]]]:
    """All four security paths up at once, measured in alternation (round r of every path,
    then round r+1), so that a machine that slows down mid-run slows every path alike;
    each figure is the median of ``REPEAT`` rounds."""
    key, paths = security_paths(settings, logs)
    with ExitStack() as stack:
        urls = {label: stack.enter_context(gateway_stack(env, model, logs, f"-{i}", s))
                for i, (label, s) in enumerate(paths)}
        keys = {label: key if s.gateway.require_auth else "" for label, s in paths}
        for label, url in urls.items():  # warm: connections, TLS sessions, allocator
            wrk(f"{url}/v2/models/{model}/infer", body, lua, 64, 2, key=keys[label])
        runs: dict[str, dict[int, list[dict[str, float]]]] = {
            label: {1: [], 64: []} for label in urls}
        for _ in range(REPEAT):
            for c in (1, 64):
                for label, url in urls.items():
                    runs[label][c].append(wrk(f"{url}/v2/models/{model}/infer", body, lua, c,
                                              seconds, key=keys[label]))
    return {label: {c: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
                    for c, rs in by_c.items()} for label, by_c in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--limit-seconds", type=float, default=1.0, help="per batch size")
    ap.add_argument("--no-gateway", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="serve.runtime_threads")
    ap.add_argument("--max-batch", type=int, default=None, help="serve.max_batch_size")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="serve.max_wait_ms")
    ap.add_argument("--repeat", type=int, default=1, help="median of N runs per figure")
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    ap.add_argument("--security", action="store_true",
                    help="also measure the gateway with auth off, keys on, TLS on and mTLS "
                         "to replicas, in alternating rounds")
    args = ap.parse_args()
    global REPEAT
    REPEAT = args.repeat
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk` (Debian) or build it from "
              "source; the bench needs a load generator that is not Python.", file=sys.stderr)
        return 2
    gateway = not args.no_gateway and importlib.util.find_spec("stratum.gateway.__main__")
    tmp = Path(tempfile.mkdtemp(prefix="stratum-bench-"))
    serve = {k: v for k, v in {"runtime_threads": args.threads, "max_batch_size": args.max_batch,
                               "max_wait_ms": args.max_wait_ms}.items() if v is not None}
    settings = load_settings(home=tmp / "home", log_level="WARNING", serve=serve)
    register(settings)
    # Replicas and the static gateway share one secret, as a deployment's would.
    env = {**settings.child_env(), "PYTHONPATH": str(ROOT),
           "STRATUM_REPLICA_SECRET": replica_secret()}
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    results: dict[str, dict[str, object]] = {}
    for key in args.models.split(","):
        model, arch, shape = MODELS[key]
        print(f"== {key} ({model}: {arch} {shape})", flush=True)
        limits = {k: in_process_limit(f, shape, args.limit_seconds)
                  for k, f in forwards(settings, model, arch, shape).items()}
        for k, lim in limits.items():
            print(f"  in-process {k:8s} samples/s by batch: "
                  + ", ".join(f"{b}:{v:,.0f}" for b, v in lim.items()), flush=True)
        best = {k: max(lim.values()) for k, lim in limits.items()}
        body = body_file(tmp, model, shape)
        rows: dict[str, object] = {"limit": best, "limit_by_batch": limits}
        paths = [("replica", run_replica)] + ([("gateway+2", run_gateway)] if gateway else [])
        for label, fn in paths:
            res = fn(env, model, body, lua, args.duration, tmp)
            rows[label] = res
            for c, r in res.items():
                print(f"  {label:10s} c={c:<3d} {r['rps']:8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
                      f"  p99 {r['p99_ms']:6.2f} ms  ratio {r['rps'] / best['raw']:.2f}"
                      f" / {r['rps'] / best['runtime']:.2f}"
                      f"  failed {r['failed']:.0f}", flush=True)
        if args.security and gateway:
            sec = run_security(env, model, body, lua, args.duration, tmp, settings)
            rows["security"] = sec
            print(security_table(key, sec), flush=True)
        if not gateway:
            print("  gateway: not measured (stratum.gateway is not available)")
        results[key] = rows
    print(table(results))
    print(f"\nload generator: wrk 1 thread; {os.cpu_count()} cores; median of {REPEAT} runs; "
          f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def table(results: dict[str, dict[str, object]]) -> str:
    lines = ["", "| model | path | conc | req/s | p50 ms | p99 ms | ratio to raw forward "
             "| ratio to replica's forward |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, rows in results.items():
        best: dict[str, float] = rows["limit"]  # type: ignore[assignment]
        raw, rt = best["raw"], best["runtime"]
        lines.append(f"| {key} | in-process raw PyTorch forward (NCHW) | - | {raw:,.0f} "
                     f"samples/s | | | 1.00 | {raw / rt:.2f} |")
        lines.append(f"| {key} | in-process replica's forward (runtime) | - | {rt:,.0f} "
                     f"samples/s | | | {rt / raw:.2f} | 1.00 |")
        for label in ("replica", "gateway+2"):
            res = rows.get(label)
            if not isinstance(res, dict):
                continue
            for c, r in res.items():
                lines.append(f"| {key} | {label} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                             f"{r['p99_ms']:.2f} | {r['rps'] / raw:.2f} | {r['rps'] / rt:.2f} |")
    return "\n".join(lines)


def security_table(model: str, sec: dict[str, dict[int, dict[str, float]]]) -> str:
    """What auth and TLS cost: each path against auth off, measured in the same rounds."""
    base = sec["auth off"]
    lines = [f"\n{model} through the gateway with 2 replicas: the cost of auth and TLS",
             "| path | conc | req/s | p50 ms | p99 ms | req/s vs auth off | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, res in sec.items():
        for c, r in res.items():
            lines.append(f"| {label} | {c} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['rps'] / base[c]['rps']:.2f} | "
                         f"{r['failed']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
