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

Throughput is the median over epochs, then the median of the repeats; a ratio is the
median over repeats of stratum / the plain run beside it in the same invocation.

    .venv/bin/python bench/train.py [--repeats 3] [--epochs 2] [--kills 1]
    .venv/bin/python bench/train.py --parts single      # only what is named: single,ddp,kill
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
    from stratum.models import build_model

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
    ap.add_argument("--kills", type=int, default=1)
    ap.add_argument("--parts", default="single,ddp,kill", help="comma-separated subset")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, single process")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    share = max(1, (os.cpu_count() or 1) // 2)  # threads per ddp worker, as the launcher
    pairs = {  # part -> (baseline, stratum), each a function of the home folder
        "single": (lambda h: result(run_child("plain", h, args.epochs, args.threads), "plain"),
                   lambda h: result(run_child("stratum", h, args.epochs, args.threads, 1),
                                    "stratum")),
        "ddp": (lambda h: plain_ddp(h, args.epochs, share),
                lambda h: result(run_child("stratum", h, args.epochs, share, 2), "ddp")),
    }
    t_start = time.perf_counter()
    runs: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    kills: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stratum-bench-train-") as tmp:
        home = Path(tmp) / "home"
        settings: Settings = load_settings(home=home)
        store = Store.open(settings)
        from stratum.data import ingest

        ingest("builtin:mnist", "mnist", store)
        store.close()
        for i in range(args.repeats):
            for part in parts & pairs.keys():
                print(f"repeat {i + 1}/{args.repeats}: {part}", flush=True)
                base, ours = runs.setdefault(part, ([], []))
                plain_fn, stratum_fn = pairs[part]
                if i % 2 == 0:  # alternate the order, so drift in the machine's load cancels
                    base.append(plain_fn(home))
                    ours.append(stratum_fn(home))
                else:
                    ours.append(stratum_fn(home))
                    base.append(plain_fn(home))
        for i in range(args.kills if "kill" in parts else 0):
            print(f"kill {i + 1}/{args.kills}", flush=True)
            kills.append(result(run_child("kill", home, args.epochs, share), "kill"))
    print()
    print(f"{'measurement':<44}{'median':>18}  {'range':>15}   vs baseline / notes")
    print("-" * 118)
    for part, (base, ours) in sorted(runs.items(), key=lambda kv: kv[0] != "single"):
        rows(part, base, ours)
    if kills:
        kill_rows(kills)
    print(f"\nbuiltin:mnist 4,000 train images, examples/mnist.yaml (cnn, batch 32), "
          f"{args.epochs} epochs per run; medians of {args.repeats} repeats, "
          f"{args.kills} kill run(s); torch threads: {args.threads} single, {share} per ddp "
          f"worker; {os.cpu_count()} cores; total {time.perf_counter() - t_start:.0f} s")


def line(label: str, value: str, spread: str, note: str) -> None:
    print(f"{label:<44}{value:>18}  {spread:>15}   {note}")


def rows(part: str, base: list[dict[str, Any]], ours: list[dict[str, Any]]) -> None:
    b, o = [rate(d) for d in base], [rate(d) for d in ours]
    names = {"single": ("plain PyTorch loop, 1 process", "stratum single"),
             "ddp": ("plain torch DDP, 2 processes (gloo)", "stratum ddp, 2 workers")}[part]
    line(names[0], f"{median(b):,.0f} samples/s", f"{min(b):,.0f}-{max(b):,.0f}", "baseline")
    # Each stratum run is paired with the baseline run next to it, so the machine's load
    # drifting between repeats cancels out of the ratio.
    paired = [oi / bi for oi, bi in zip(o, b, strict=True)]
    line(names[1], f"{median(o):,.0f} samples/s", f"{min(o):,.0f}-{max(o):,.0f}",
         f"{median(paired):.3f} (target >= 0.97; median of paired ratios, "
         f"{min(paired):.2f}-{max(paired):.2f})")
    if part != "single":
        return
    blocking = [s for d in ours for s in d["blocking_s"]]
    write = [s for d in ours for s in d["write_s"]]
    step_s = ours[0]["batch"] / median(o)
    every = ours[0]["checkpoint_every"]
    line("checkpoint: loop blocked per save", f"{median(blocking) * 1e3:.1f} ms",
         f"{min(blocking) * 1e3:.1f}-{max(blocking) * 1e3:.1f}",
         f"{100 * median(blocking) / step_s:.1f}% of one step, "
         f"{100 * median(blocking) / (every * step_s):.2f}% of the {every} steps between saves")
    line("checkpoint: background write per save", f"{median(write) * 1e3:.1f} ms",
         f"{min(write) * 1e3:.1f}-{max(write) * 1e3:.1f}",
         f"{ours[0]['checkpoint_bytes'] / 2**20:.1f} MiB each (model, Adam state, rng)")


def kill_rows(kills: list[dict[str, Any]]) -> None:
    from_kill = [k["died_at"] + k["recover_s"] - k["killed_at"] for k in kills]
    lost = [k["last_step"] - k["resumed_from"] for k in kills]
    line("ddp: SIGKILL of a worker -> training again", f"{median(from_kill):.2f} s",
         f"{min(from_kill):.2f}-{max(from_kill):.2f}",
         f"launcher recover_s {median([k['recover_s'] for k in kills]):.2f} s; "
         f"steps lost: {', '.join(map(str, lost))}")


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
