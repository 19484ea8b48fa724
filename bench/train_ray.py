"""Training on Ray against local ddp: samples/s of the same job, side by side.

On builtin:mnist with examples/mnist.yaml (cnn, Adam, global batch 32, a checkpoint every
50 steps), 2 workers of 1 torch thread each, in alternating order:

- ``local``: ``stratum.train.fit`` with ``cluster.backend: local`` (2 worker processes,
  gloo), the baseline;
- ``ray``: the same ``fit`` with ``cluster.backend: ray`` (2 Ray Train workers of 1 CPU in
  ``TorchTrainer``, gloo) on a local Ray cluster started here for the bench.

Throughput is what the loop measures (samples/s, median over a run's epochs, rank 0's
count times the workers); the ratio is the median over repeats of ray / the local run
beside it. Wall time is the whole ``fit`` (worker start, data load, test evaluation,
registration): it shows what Ray's worker start costs on top. The Ray cluster has one node
here: the stores are this machine's SQLite and artifact folder, which a cluster of several
nodes refuses (tests/integration/test_ray_train.py trains on three with PostgreSQL and S3).

    .venv/bin/python bench/train_ray.py [--repeats 2] [--epochs 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stratum.cluster import local  # noqa: E402
from stratum.config import Settings, load_settings  # noqa: E402
from stratum.data import ingest  # noqa: E402
from stratum.store import Store  # noqa: E402
from stratum.train import fit, parse_config  # noqa: E402

EXAMPLE = ROOT / "examples" / "mnist.yaml"


def one_run(settings: Settings, store: Store, backend: str, workers: int, epochs: int,
            n: int) -> dict[str, Any]:
    doc = {**yaml.safe_load(EXAMPLE.read_text()), "name": f"mnist-{backend}-{n}",
           "workers": workers, "epochs": epochs}
    on = settings.model_copy(update={
        "cluster": settings.cluster.model_copy(update={"backend": backend})})
    t0 = time.perf_counter()
    mv = fit(parse_config(doc), on, store=store)
    wall = time.perf_counter() - t0
    summary = store.meta.run(mv.run_id or "").summary
    return {"samples_per_s": float(summary["samples_per_s"]), "wall_s": wall,
            "accuracy": mv.metrics["accuracy"], "backend": summary.get("backend")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t_start = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="stratum-bench-ray-")) / "home"
    settings = load_settings(home=home)
    store = Store.open(settings)
    ingest("builtin:mnist", "mnist", store)
    print(f"starting a 1-node Ray cluster ({args.workers} CPUs)", flush=True)
    local.start(home, nodes=1, cpus_per_node=args.workers)
    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    try:
        for i in range(args.repeats):
            order = ("local", "ray") if i % 2 == 0 else ("ray", "local")
            for backend in order:
                print(f"repeat {i + 1}/{args.repeats}: {backend}", flush=True)
                runs[backend].append(one_run(settings, store, backend, args.workers,
                                             args.epochs, i))
    finally:
        import ray

        ray.shutdown()
        local.stop(home)
        store.close()
    table(runs, args, time.perf_counter() - t_start)


def table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
          total_s: float) -> None:
    def med(backend: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[backend])

    def spread(backend: str, key: str, fmt: str) -> str:
        xs = [r[key] for r in runs[backend]]
        return f"{format(min(xs), fmt)}-{format(max(xs), fmt)}"

    ratios = [r["samples_per_s"] / b["samples_per_s"]
              for r, b in zip(runs["ray"], runs["local"], strict=True)]
    walls = [r["wall_s"] / b["wall_s"] for r, b in zip(runs["ray"], runs["local"], strict=True)]
    print()
    print(f"{'measurement':<40}{'median':>18}  {'range':>15}   vs local ddp")
    print("-" * 100)
    for backend, label in (("local", f"local ddp, {args.workers} workers"),
                           ("ray", f"Ray Train, {args.workers} workers")):
        note = "baseline" if backend == "local" else (
            f"{statistics.median(ratios):.3f} (target >= 0.9; paired ratios "
            f"{min(ratios):.2f}-{max(ratios):.2f})")
        print(f"{label + ' samples/s':<40}{med(backend, 'samples_per_s'):>18,.0f}  "
              f"{spread(backend, 'samples_per_s', ',.0f'):>15}   {note}")
    for backend in ("local", "ray"):
        note = "baseline" if backend == "local" else f"{statistics.median(walls):.2f}x"
        print(f"{backend + ' fit wall time (s)':<40}{med(backend, 'wall_s'):>18.1f}  "
              f"{spread(backend, 'wall_s', '.1f'):>15}   {note}")
    acc = {b: [round(r["accuracy"], 3) for r in runs[b]] for b in runs}
    print(f"\nbuiltin:mnist, examples/mnist.yaml (cnn, batch 32), {args.epochs} epochs per run, "
          f"{args.repeats} repeats in alternating order; 1 torch thread per worker; "
          f"{os.cpu_count()} cores; accuracy {acc}; total {total_s:.0f} s")


if __name__ == "__main__":
    main()
