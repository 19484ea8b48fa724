"""The GPU paths, on a machine with an NVIDIA GPU: one run, every figure side by side.

On builtin:mnist with examples/mnist.yaml (cnn, Adam, batch 32, 8 epochs), each run in a
child process of its own (a fresh CUDA context), one after the other:

- training: the one loop in process on the CPU (the baseline) and on the GPU, in fp32 and
  under bf16 autocast; ddp with one worker process (an NCCL group); fsdp on NCCL (one
  rank: a single GPU cannot hold two NCCL ranks); and, with ``--ray``, Ray Train on a
  one-node local Ray cluster with a GPU worker. Test accuracy, samples/s (median over
  epochs), wall time, the device the run reports;
- serving: the forward pass in process (batch 1, 64 and 512; GPU fp32 and bf16 against
  the CPU's ONNX Runtime), then one replica process over HTTP at 64 concurrent clients,
  ``serve.device`` cpu against cuda against cuda + bf16.

    python bench/gpu.py [--epochs 8] [--seconds 8] [--ray]

Load comes from asyncio httpx clients in 4 processes (no wrk on a lent GPU machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from stratum.config import load_settings  # noqa: E402
from stratum.store import Store  # noqa: E402

EXAMPLE = ROOT / "examples" / "mnist.yaml"
SERVED = "g-cpu"  # the model the replicas serve: the CPU run's (any would do)


def cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
        ) -> str:
    out = subprocess.run([sys.executable, "-m", "stratum.cli.main", *args], text=True,
                         capture_output=True, timeout=timeout,
                         env={**os.environ, "STRATUM_HOME": str(home), **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"stratum {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def child(home: str, mode: str, epochs: int) -> dict[str, Any]:
    """One training run in this (child) process; its figures as a dict."""
    from stratum.train import fit, parse_config

    settings = load_settings(home=home, log_level="WARNING")
    store = Store.open(settings)
    doc = {**yaml.safe_load(EXAMPLE.read_text()), "name": f"g-{mode}", "epochs": epochs}
    doc.update({"cpu": {"bf16": False}, "gpu-fp32": {"bf16": False}, "gpu-bf16": {"bf16": True},
                "ddp-nccl": {"strategy": "ddp", "workers": 1},
                "ray-gpu": {"strategy": "ddp", "workers": 1}}.get(mode, {}))
    if mode == "fsdp-nccl":
        return fsdp_one_rank(store, doc)
    if mode == "ray-gpu":
        settings = settings.model_copy(update={"cluster": settings.cluster.model_copy(
            update={"backend": "ray", "address": os.environ["BENCH_RAY_ADDRESS"],
                    "train_gpus_per_worker": 1.0})})
    t0 = time.perf_counter()
    mv = fit(parse_config(doc), settings, store=store)
    wall = time.perf_counter() - t0
    summary = store.meta.run(mv.run_id or "").summary
    store.close()
    return {"accuracy": mv.metrics["accuracy"], "wall_s": wall,
            "rate": statistics.median(h["samples_per_s"] for h in summary["history"]),
            "backend": summary.get("backend", "local"),
            "device": "cuda" if torch.cuda.is_available() and mode != "cpu" else "cpu",
            # this process's: the whole run in process, only the test pass when launched
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20
            if torch.cuda.is_available() and mode.startswith("gpu") else float("nan")}


def fsdp_one_rank(store: Store, doc: dict[str, Any]) -> dict[str, Any]:
    """The fsdp strategy itself (fully_shard, dcp checkpoints) on an NCCL group of one:
    `stratum train` asks fsdp for 2+ workers, and one GPU holds one NCCL rank."""
    from stratum.data import open_dataset
    from stratum.models import num_outputs
    from stratum.train import parse_config
    from stratum.train.components import build_loss, build_network
    from stratum.train.fsdp import FSDP
    from stratum.train.loop import Job, evaluate, train
    from stratum.train.strategies import Single, WorkerEnv
    from stratum.train.worker import load_shards

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    ds = open_dataset(store, "mnist")
    cfg = parse_config({**doc, "strategy": "ddp"})  # fit's check asks fsdp for 2 workers
    job = Job(config=cfg, run_id="bench-fsdp", dataset=f"mnist@{ds.version}")
    strategy = FSDP(WorkerEnv.from_env(), cfg)
    t0 = time.perf_counter()
    result = train(job, strategy, load_shards(store, job.dataset), store.artifacts)
    wall = time.perf_counter() - t0
    device = str(strategy.device)
    strategy.close()
    outputs = num_outputs(ds.task, ds.classes)
    net = build_network(cfg, ds.input_shape, outputs)
    net.load_state_dict(result.state_dict)
    single = Single(WorkerEnv())
    x, y = ds.load("test")
    test = evaluate(single.prepare(net), x, y, build_loss(cfg, ds.task), ds.task, outputs,
                    single)
    return {"accuracy": test["accuracy"], "wall_s": wall,
            "rate": statistics.median(h["samples_per_s"] for h in result.history),
            "backend": "local", "device": device,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_child(home: Path, mode: str, epochs: int, env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--home", str(home),
                          "--epochs", str(epochs)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=900)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-5:]}
    return dict(json.loads(line[7:]))


def forward_limits(home: Path) -> list[tuple[str, int, float]]:
    """Samples/s of the replica's runtime in process: CPU ONNX Runtime, GPU fp32, GPU bf16."""
    from stratum.serve.runtime import load_runtime
    from stratum.store import load_model

    settings = load_settings(home=home, log_level="WARNING")
    store = Store.open(settings)
    loaded = load_model(store.meta, store.artifacts, SERVED, "1")
    rows = []
    for label, dev, bf16 in (("cpu onnxruntime", "cpu", False), ("cuda fp32", "cuda", False),
                             ("cuda bf16", "cuda", True)):
        rt = load_runtime(loaded, settings.serve.model_copy(update={"device": dev,
                                                                     "bf16": bf16}),
                          home / "cache")
        for batch in (1, 64, 512):
            x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
            for _ in range(5):
                rt.predict(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 1.0:
                rt.predict(x)
                n += 1
            rows.append((label, batch, n * batch / (time.perf_counter() - t0)))
    store.close()
    return rows


def _load(url: str, secret: str, body: bytes, conns: int, seconds: float,
          q: Any) -> None:
    import httpx

    async def go() -> tuple[int, int, list[float]]:
        lat: list[float] = []
        fails = 0
        headers = {"content-type": "application/json", "x-stratum-replica-secret": secret}
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(
                max_connections=conns)) as client:
            end = time.perf_counter() + seconds

            async def one() -> None:
                nonlocal fails
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    r = await client.post(url, content=body, headers=headers)
                    lat.append(time.perf_counter() - t)
                    fails += r.status_code != 200
            await asyncio.gather(*(one() for _ in range(conns)))
        return len(lat), fails, lat

    q.put(asyncio.run(go()))


def serve_http(home: Path, device: str, bf16: bool, seconds: float) -> dict[str, float]:
    from stratum.security.tokens import replica_secret
    from tests.services import free_port, started

    secret, port = replica_secret(), free_port()
    env = {**os.environ, "STRATUM_HOME": str(home), "STRATUM_REPLICA_SECRET": secret,
           "STRATUM_SERVE__DEVICE": device, "STRATUM_SERVE__BF16": str(bf16).lower(),
           "STRATUM_LOG_LEVEL": "WARNING", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    base = f"http://127.0.0.1:{port}"
    x = np.random.default_rng(0).random(784).round(4).tolist()
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                   "shape": [1, 1, 28, 28], "data": x}]}).encode()
    cmd = [sys.executable, "-m", "stratum.serve", "--model", f"{SERVED}@1", "--port", str(port)]
    with started(cmd, ready_url=base + "/v2/health/ready", env=env,
                 log=home / f"replica-{device}-{bf16}.log"):
        ctx = mp.get_context("spawn")
        url = f"{base}/v2/models/{SERVED}/infer"
        for secs in (2.0, seconds):  # a warm-up round, then the measured one
            q = ctx.Queue()
            procs = [ctx.Process(target=_load, args=(url, secret, body, 16, secs, q))
                     for _ in range(4)]
            for p in procs:
                p.start()
            got = [q.get(timeout=secs + 60) for _ in procs]
            for p in procs:
                p.join()
        lat = sorted(v for _, _, ls in got for v in ls)
        info = __import__("httpx").get(base + "/admin/info",
                                       headers={"x-stratum-replica-secret": secret}).json()
    return {"rps": sum(n for n, _, _ in got) / seconds, "failed": sum(f for _, f, _ in got),
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3,
            "runtime": json.dumps(info.get("runtime"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--ray", action="store_true", help="also train on a local Ray cluster")
    ap.add_argument("--parts", default="train,serve", help="train, serve or both")
    ap.add_argument("--child", default=None)
    ap.add_argument("--home", default=None)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.home, args.child, args.epochs)))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device here: this bench is for a machine with an NVIDIA GPU",
              file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    print(f"torch {torch.__version__}, {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"bf16 {torch.cuda.is_bf16_supported()}, nccl {torch.cuda.nccl.version()}")
    home = Path(tempfile.mkdtemp(prefix="stratum-gpu-")) / "home"
    cli(home, "data", "ingest", "builtin:mnist", "--name", "mnist")
    runs: dict[str, dict[str, Any]] = {}
    parts = set(args.parts.split(","))
    modes = (("cpu", {"CUDA_VISIBLE_DEVICES": ""}), ("gpu-fp32", None), ("gpu-bf16", None),
             ("ddp-nccl", None), ("fsdp-nccl", None))
    for mode, env in modes if "train" in parts else modes[:1]:  # serve needs the cpu run's
        runs[mode] = run_child(home, mode, args.epochs, env)
        print(mode, json.dumps(runs[mode]), flush=True)
    if args.ray:
        address = ray_up(home)
        try:
            runs["ray-gpu"] = run_child(home, "ray-gpu", args.epochs,
                                        {"BENCH_RAY_ADDRESS": address})
            print("ray-gpu", json.dumps(runs["ray-gpu"]), flush=True)
        finally:
            cli(home, "cluster", "down")
    base = runs["cpu"].get("rate") or float("nan")
    print(f"\nTraining, mnist cnn, {args.epochs} epochs (samples/s: median over epochs)")
    print(f"{'run':<10} {'device':<8} {'backend':<8} {'test acc':>8} {'samples/s':>10} "
          f"{'vs cpu':>7} {'wall s':>7} {'peak GPU MiB':>12}")
    for mode, r in runs.items():
        if "error" in r:
            print(f"{mode:<10} FAILED: {' | '.join(r['error'])}")
            continue
        print(f"{mode:<10} {r['device']:<8} {r['backend']:<8} {r['accuracy']:>8.4f} "
              f"{r['rate']:>10.0f} {r['rate'] / base:>7.2f} {r['wall_s']:>7.1f} "
              f"{r['peak_gpu_mib']:>12.1f}")
    if "serve" not in parts:
        return 0
    rows = forward_limits(home)
    cpu = {b: v for label, b, v in rows if label == "cpu onnxruntime"}
    print("\nForward pass in process (samples/s)")
    print(f"{'runtime':<16} {'batch':>5} {'samples/s':>11} {'vs cpu':>7}")
    for label, b, v in rows:
        print(f"{label:<16} {b:>5} {v:>11.0f} {v / cpu[b]:>7.2f}")
    print(f"\nOne replica over HTTP, 64 clients (4 processes x 16), {args.seconds:g} s")
    print(f"{'serve.device':<14} {'req/s':>8} {'vs cpu':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'failed':>6}  runtime")
    http: dict[str, dict[str, float]] = {}
    for label, dev, bf16 in (("cpu", "cpu", False), ("cuda", "cuda", False),
                             ("cuda bf16", "cuda", True)):
        http[label] = serve_http(home, dev, bf16, args.seconds)
        h = http[label]
        print(f"{label:<14} {h['rps']:>8.0f} {h['rps'] / http['cpu']['rps']:>7.2f} "
              f"{h['p50_ms']:>7.2f} {h['p99_ms']:>7.2f} {h['failed']:>6.0f}  {h['runtime']}",
              flush=True)
    return 0


def ray_up(home: Path) -> str:
    out = cli(home, "cluster", "up", "--nodes", "1", "--gpus", "1", "--cpus", "8", "--json")
    return str(json.loads(out)["address"])


if __name__ == "__main__":
    sys.exit(main())
