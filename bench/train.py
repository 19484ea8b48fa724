"""Training benchmark: Stratum's loop against plain PyTorch, on the mnist cnn.

On builtin:mnist (4,000 training images) with examples/mnist.yaml (cnn, Adam, batch 32,
a checkpoint every 50 steps), each in its own child process and in alternating order:

- samples/s of ``stratum.train.fit`` in one process vs a plain PyTorch loop (same network,
  arrays, batch size and thread count);
- samples/s of stratum ddp with 2 workers vs plain DistributedDataParallel with 2
  processes over gloo (same per-worker shards, local batch and threads);
- what a checkpoint costs: the time the loop stands still per save (the write itself runs
  in a background thread), as a share of one step and of the interval between saves;
- how long a ddp job takes from a SIGKILL of one worker to training again.

Throughput is the median over epochs, then the median of the repeats; the ratios compare
with the plain loop measured in the same run.

    .venv/bin/python bench/train.py [--repeats 3] [--epochs 2] [--kills 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

from stratum.config import Settings, load_settings  # noqa: E402
from stratum.store import Store  # noqa: E402

EXAMPLE = ROOT / "examples" / "mnist.yaml"


# -- children: each measurement runs in a fresh process ---------------------------------

def _config(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return {**doc, **changes}


def child_plain(home: str, epochs: int, threads: int) -> dict[str, Any]:
    """The loop a person writes by hand; in a ddp group when WORLD_SIZE > 1."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from stratum.data import open_dataset
    from stratum.train.zoo import build_model

    torch.set_num_threads(threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = _config()
    store = Store.open(load_settings(home=home))
    x_np, y_np = open_dataset(store, cfg["dataset"]).load("train", worker=rank, world=world)
    store.close()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(cfg["seed"])
    model: torch.nn.Module = build_model("cnn", list(x.shape[1:]), 10, **cfg["model"]["params"])
    batch = cfg["batch_size"] // world
    steps = -(-len(x) // batch)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
        top = torch.tensor([steps])
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        steps = int(top)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["optimizer"]["lr"])
    model.train()
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(x))
        if steps * batch > len(x):  # every worker runs the same number of steps
            order = torch.cat([order, torch.randint(len(x), (steps * batch - len(x),))])
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(steps * batch * world / (time.perf_counter() - t0))
    if world > 1:
        dist.destroy_process_group()
    return {"rates": rates}


def child_stratum(home: str, epochs: int, threads: int, workers: int) -> dict[str, Any]:
    from stratum.train import fit, parse_config
    from stratum.train.checkpoint import MANIFEST, checkpoint_prefix, list_checkpoints

    settings = load_settings(home=home)
    store = Store.open(settings)
    cfg = parse_config(_config(name=f"bench-{workers}", epochs=epochs, threads=threads,
                               workers=workers))
    mv = fit(cfg, settings, store=store)
    summary = store.meta.run(mv.run_id or "").summary
    steps = list_checkpoints(store.artifacts, mv.run_id or "")
    manifest = json.loads(store.artifacts.get_bytes(
        f"{checkpoint_prefix(mv.run_id or '')}/{steps[0]:010d}/{MANIFEST}"))
    store.close()
    return {"rates": [h["samples_per_s"] for h in summary["history"]],
            "blocking_s": summary["checkpoint_seconds"],
            "write_s": summary["checkpoint_write_seconds"],
            "checkpoint_bytes": manifest["bytes"], "checkpoint_every": cfg.checkpoint_every,
            "batch": cfg.batch_size}


def child_kill(home: str, epochs: int, threads: int) -> dict[str, Any]:
    """A 2-worker ddp run whose rank 1 is SIGKILLed halfway through the last epoch."""
    from stratum.train import Progress, fit, parse_config
    from stratum.train.launcher import run_dir, worker_pids

    settings = load_settings(home=home)
    store = Store.open(settings)
    name = f"bench-kill-{time.time_ns()}"
    killed: dict[str, float] = {}

    def kill(p: Progress) -> None:
        if killed or p.phase != "train" or p.attempt != 0 or not p.epochs:
            return
        per_epoch = p.total_steps // p.epochs
        if p.step < (p.epochs - 1) * per_epoch + per_epoch // 2:
            return
        run = next(r for r in store.meta.runs(name) if r.status == "running")
        os.kill(worker_pids(run_dir(settings, run.id))[1], signal.SIGKILL)
        killed.update(at=time.time(), step=p.step)

    cfg = parse_config(_config(name=name, epochs=epochs, threads=threads, workers=2))
    mv = fit(cfg, settings, progress=kill, store=store)
    (restart,) = store.meta.run(mv.run_id or "").summary["restarts"]
    store.close()
    return {"killed_at": killed["at"], **restart}


# -- the parent: orchestrate, then print one table --------------------------------------

def run_child(mode: str, home: Path, *args: object, env: dict[str, str] | None = None,
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", mode, str(home), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def result(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{err[-4000:]}")
    lines = out.strip().splitlines()  # only rank 0 of a group reports
    doc: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return doc


def plain_ddp(home: Path, epochs: int, threads: int) -> dict[str, Any]:
    from stratum.train.launcher import free_port

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    procs = [run_child("plain", home, epochs, threads, env={**env, "RANK": str(r)})
             for r in range(2)]
    docs = [result(p, f"plain ddp rank {r}") for r, p in enumerate(procs)]
    return docs[0]


def rate(doc: dict[str, Any]) -> float:
    return float(statistics.median(doc["rates"]))


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, single process")
    args = ap.parse_args()
    share = max(1, (os.cpu_count() or 1) // 2)  # threads per ddp worker, as the launcher
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stratum-bench-train-") as tmp:
        home = Path(tmp) / "home"
        settings: Settings = load_settings(home=home)
        store = Store.open(settings)
        from stratum.data import ingest

        ingest("builtin:mnist", "mnist", store)
        store.close()
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                                 ("plain", "stratum", "plain_ddp", "ddp")}
        for i in range(args.repeats):
            print(f"repeat {i + 1}/{args.repeats}: single", flush=True)
            for mode in (("plain", "stratum") if i % 2 == 0 else ("stratum", "plain")):
                if mode == "plain":
                    runs[mode].append(result(run_child("plain", home, args.epochs,
                                                       args.threads), "plain"))
                else:
                    runs[mode].append(result(run_child("stratum", home, args.epochs,
                                                       args.threads, 1), "stratum"))
            print(f"repeat {i + 1}/{args.repeats}: ddp x2", flush=True)
            for mode in (("plain_ddp", "ddp") if i % 2 == 0 else ("ddp", "plain_ddp")):
                if mode == "plain_ddp":
                    runs[mode].append(plain_ddp(home, args.epochs, share))
                else:
                    runs[mode].append(result(run_child("stratum", home, args.epochs, share,
                                                       2), "stratum ddp"))
        kills = []
        for i in range(args.kills):
            print(f"kill {i + 1}/{args.kills}", flush=True)
            kills.append(result(run_child("kill", home, args.epochs, share), "kill"))
    report(args, share, runs, kills, time.perf_counter() - t_start)


def report(args: argparse.Namespace, share: int, runs: dict[str, list[dict[str, Any]]],
           kills: list[dict[str, Any]], total_s: float) -> None:
    r = {k: median([rate(d) for d in v]) for k, v in runs.items()}
    single = runs["stratum"]
    blocking = median([s for d in single for s in d["blocking_s"]])
    write = median([s for d in single for s in d["write_s"]])
    step_s = single[0]["batch"] / r["stratum"]
    every = single[0]["checkpoint_every"]
    recover = median([k["recover_s"] for k in kills])
    from_kill = median([k["died_at"] + k["recover_s"] - k["killed_at"] for k in kills])
    lost = [k["last_step"] - k["resumed_from"] for k in kills]

    rows = [
        ("plain PyTorch loop, 1 process", f"{r['plain']:,.0f} samples/s", "baseline"),
        ("stratum single", f"{r['stratum']:,.0f} samples/s",
         f"{r['stratum'] / r['plain']:.3f} (target >= 0.97)"),
        ("plain torch DDP, 2 processes (gloo)", f"{r['plain_ddp']:,.0f} samples/s", "baseline"),
        ("stratum ddp, 2 workers", f"{r['ddp']:,.0f} samples/s",
         f"{r['ddp'] / r['plain_ddp']:.3f} (target >= 0.97)"),
        ("checkpoint: loop blocked per save", f"{blocking * 1e3:.1f} ms",
         f"{100 * blocking / step_s:.1f}% of a step, "
         f"{100 * blocking / (every * step_s):.2f}% of {every} steps"),
        ("checkpoint: background write per save", f"{write * 1e3:.1f} ms",
         f"{single[0]['checkpoint_bytes'] / 2**20:.1f} MiB each"),
        ("ddp: SIGKILL of a worker -> training again", f"{from_kill:.2f} s",
         f"launcher recover_s {recover:.2f} s; lost {max(lost)} steps at most"),
    ]
    print()
    print(f"{'measurement':<44}{'median':>20}   vs baseline / notes")
    print("-" * 110)
    for label, value, note in rows:
        print(f"{label:<44}{value:>20}   {note}")
    print(f"\nbuiltin:mnist 4,000 train images, examples/mnist.yaml (cnn, batch 32, checkpoint "
          f"every {every} steps), {args.epochs} epochs per run; medians of {args.repeats} "
          f"repeats ({args.kills} kill runs); torch threads: {args.threads} single, {share} "
          f"per ddp worker; {os.cpu_count()} cores; total {total_s:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        mode, home_arg, *rest = sys.argv[2:]
        nums = [int(a) for a in rest]
        if mode == "plain":
            doc = child_plain(home_arg, nums[0], nums[1])
        elif mode == "stratum":
            doc = child_stratum(home_arg, nums[0], nums[1], nums[2])
        else:
            doc = child_kill(home_arg, nums[0], nums[1])
        if int(os.environ.get("RANK", 0)) == 0:
            print(json.dumps(doc))
    else:
        main()
