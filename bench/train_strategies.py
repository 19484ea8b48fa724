"""Training strategies side by side: every strategy with 2 workers on the mnist cnn.

On builtin:mnist (4,000 training images) with examples/mnist.yaml (cnn, Adam, batch 32,
8 epochs), each run in its own child process, one after the other:

- samples/s (median over epochs) of ddp, parameter_server (2 workers + 2 servers), fsdp,
  fedavg (2 IID clients) and an ensemble of 2 cnns (one per process: the sum of the two
  members' rates), against ddp and against the plain PyTorch loop in one process and
  plain torch DDP with 2 processes (bench/train.py's baselines, 2 epochs each);
- per worker: parameter + optimizer-state bytes held and peak resident memory;
- time to 0.97 validation accuracy (500 images) for ddp, parameter_server and fedavg:
  the epochs' training time summed up to the first epoch at 0.97, and the whole fit's
  wall time to that point (process start, rendezvous, validation included).

    .venv/bin/python bench/train_strategies.py [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import result  # noqa: E402  (bench/train.py, beside this file)

from stratum.config import load_settings  # noqa: E402
from stratum.store import Store  # noqa: E402

EXAMPLE = ROOT / "examples" / "mnist.yaml"
TARGET = 0.97
STRATEGIES: dict[str, dict[str, Any]] = {
    "ddp": {"strategy": "ddp"},
    "parameter_server": {"strategy": "parameter_server", "parameter_server": {"servers": 2}},
    "fsdp": {"strategy": "fsdp"},
    "fedavg": {"strategy": "fedavg"},
    "ensemble": {"strategy": "ensemble", "ensemble": {"members": [{}, {}]}},
}


def child(home: str, name: str, epochs: int) -> dict[str, Any]:
    from stratum.train import fit, parse_config

    settings = load_settings(home=home)
    store = Store.open(settings)
    doc = {**yaml.safe_load(EXAMPLE.read_text()), **STRATEGIES[name], "name": f"b-{name}",
           "epochs": epochs, "workers": 2, "threads": 1}
    t0 = time.perf_counter()
    mv = fit(parse_config(doc), settings, store=store)
    wall = time.perf_counter() - t0
    s = store.meta.run(mv.run_id or "").summary
    store.close()
    if name == "ensemble":
        rates = [sum(m["samples_per_s"] for m in s["members"])]
        history: list[dict[str, float]] = []
    else:
        rates, history = [h["samples_per_s"] for h in s["history"]], s["history"]
    return {"rates": rates, "history": history, "memory": s.get("memory") or [],
            "wall_s": wall, "launch_s": s.get("launch_wall_s", wall),
            "accuracy": mv.metrics["accuracy"]}


def run_child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def plain(home: Path, workers: int, epochs: int) -> dict[str, Any]:
    """bench/train.py's plain loop: one process, or torch DDP over ``workers``."""
    from stratum.train.launcher import free_port

    script = str(ROOT / "bench" / "train.py")
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(workers)}
    procs = [run_child(script, "--child", "plain", str(home), str(epochs), "1",
                       env={**env, "RANK": str(r)}) for r in range(workers)]
    docs = [result(p, f"plain rank {r}") for r, p in enumerate(procs)]
    return docs[0]


def to_target(history: list[dict[str, float]]) -> tuple[float | None, int | None]:
    spent = 0.0
    for h in history:
        spent += h["epoch_time_s"]
        if h.get("val_accuracy", 0.0) >= TARGET:
            return spent, int(h["epoch"])
    return None, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    t_start = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="stratum-bench-strategies-") as tmp:
        home = Path(tmp) / "home"
        store = Store.open(load_settings(home=home))
        from stratum.data import ingest

        ingest("builtin:mnist", "mnist", store)
        store.close()
        for label, workers in (("plain PyTorch loop, 1 process", 1),
                               ("plain torch DDP, 2 processes", 2)):
            print(f"{label}", flush=True)
            runs[label] = plain(home, workers, 2)
        for name in STRATEGIES:
            print(f"{name}", flush=True)
            runs[name] = result(run_child(__file__, "--child", str(home), name,
                                          str(args.epochs)), name)
    report(runs, args.epochs, time.perf_counter() - t_start)


def report(runs: dict[str, dict[str, Any]], epochs: int, total: float) -> None:
    def rate(doc: dict[str, Any]) -> float:
        return float(statistics.median(doc["rates"]))

    single, ddp = rate(runs["plain PyTorch loop, 1 process"]), rate(runs["ddp"])
    print(f"\n{'run (2 workers unless said)':<34}{'samples/s':>10}{'vs ddp':>8}"
          f"{'vs 1-proc':>10}{'param+opt MiB':>15}{'peak RSS MiB':>14}{'test acc':>9}"
          f"   time to val {TARGET}")
    print("-" * 130)
    for label, doc in runs.items():
        mem = doc.get("memory") or []
        held = "/".join(f"{(w['param_bytes'] + w['optimizer_bytes']) / 2**20:.2f}"
                        for w in mem) or "-"
        rss = "/".join(f"{w['peak_rss_bytes'] / 2**20:.0f}" for w in mem) or "-"
        acc = f"{doc['accuracy']:.3f}" if "accuracy" in doc else "-"
        spent, epoch = to_target(doc.get("history") or [])
        if label in ("ddp", "parameter_server", "fedavg"):
            reach = (f"{spent:.1f} s training (epoch {epoch}); fit wall "
                     f"{doc['wall_s']:.0f} s for {epochs} epochs" if spent is not None
                     else f"not reached in {epochs} epochs")
        else:
            reach = ""
        print(f"{label:<34}{rate(doc):>10,.0f}{rate(doc) / ddp:>8.2f}{rate(doc) / single:>10.2f}"
              f"{held:>15}{rss:>14}{acc:>9}   {reach}")
    print(f"\nbuiltin:mnist 4,000 train images, examples/mnist.yaml (cnn, batch 32), "
          f"{epochs} epochs per strategy run (plain loops: 2), one run each, 1 torch thread "
          f"per process; {os.cpu_count()} cores; total {total:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        home_arg, strategy, n = sys.argv[2:5]
        print(json.dumps(child(home_arg, strategy, int(n))))
    else:
        main()
