"""Compressed versions through a real replica: the mnist cnn parent against its children
(int8 dynamic, int8 static, 80% pruned, structured 50%, the half-width student), each
served by its own replica process, at 64 concurrent single-sample OIP JSON requests.

Trains the parent (4 epochs of examples/mnist.yaml) and makes the children with
``stratum.compress`` in a fresh home, starts one replica per version (all at once; idle
ones do not spin), then runs wrk against each in turn, round after round, so a burst of
load from elsewhere on a shared machine hits every version rather than one. Each figure
is the median round by req/s, with that round's own latencies.

    .venv/bin/python bench/compress_serve.py [--duration 8] [--rounds 3]

Load comes from wrk, as in bench/serve.py (whose helpers this reuses).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import serve as sb  # noqa: E402  (bench/serve.py)

from stratum.compress import Distill, Prune, Quantize, compress  # noqa: E402
from stratum.config import Settings, load_settings  # noqa: E402
from stratum.data import ingest  # noqa: E402
from stratum.security.tokens import replica_secret  # noqa: E402
from stratum.store import Store  # noqa: E402
from stratum.train import fit, parse_config  # noqa: E402
from stratum.train.tune import finetune  # noqa: E402
from tests.services import free_port, started  # noqa: E402

CHILDREN: list[tuple[str, list[Any]]] = [
    ("int8 dynamic", [Quantize("dynamic")]),
    ("int8 static", [Quantize("static", 200)]),
    ("pruned 80% + 1 epoch", [Prune(0.8, finetune_epochs=1)]),
    ("structured 50% + 1 epoch", [Prune(0.5, structured=True, finetune_epochs=1)]),
    ("distilled half width (8 ep.)", [Distill(width=0.5, epochs=8)]),
]


def versions(settings: Settings) -> dict[str, tuple[int, float]]:
    """label -> (version, test accuracy): the parent, then each child."""
    store = Store.open(settings)
    try:
        ingest("builtin:mnist", "mnist", store)
        doc = yaml.safe_load((ROOT / "stratum" / "examples" / "mnist.yaml").read_text())
        mv = fit(parse_config({**doc, "epochs": 4, "threads": 1}), settings, store=store)
        out = {"parent (torch, served in ORT)": (mv.version, mv.metrics["accuracy"])}
        for label, passes in CHILDREN:
            r = compress(store, f"mnist@{mv.version}", passes, finetune=finetune,
                         timing_s=0.2)
            out[label] = (r.final.figures.version, r.final.figures.score)
            print(f"{label}: v{r.final.figures.version}", file=sys.stderr, flush=True)
        return out
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="median of N interleaved rounds")
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="stratum-bench-compress-serve-"))
    settings = load_settings(home=tmp / "home", log_level="WARNING")
    made = versions(settings)
    secret = replica_secret()
    env = {**settings.child_env(), "PYTHONPATH": str(ROOT), "STRATUM_REPLICA_SECRET": secret}
    lua = tmp / "post.lua"
    lua.write_text(sb.LUA)
    body = sb.body_file(tmp, "mnist", [1, 28, 28])
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in made}
    with ExitStack() as stack:
        urls = {}
        for label, (version, _) in made.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            stack.enter_context(started(
                [sys.executable, "-m", "stratum.serve", "--model", f"mnist@{version}",
                 "--port", str(port)], ready_url=base + "/v2/health/ready", env=env,
                log=tmp / f"replica-{version}.log", timeout=120))
            urls[label] = f"{base}/v2/models/mnist/infer"
            sb.wrk(urls[label], body, lua, args.connections, 2, secret)  # warm
        for _ in range(args.rounds):
            for label, url in urls.items():
                runs[label].append(sb.wrk(url, body, lua, args.connections, args.duration,
                                          secret))
    print(table(made, runs, args.connections))
    print(f"\nwrk 1 thread, {args.connections} connections, {args.duration:g} s runs, median "
          f"of {args.rounds} interleaved rounds; one replica per version (serving defaults); "
          f"{os.cpu_count()} cores shared by wrk and the replicas; load average after "
          f"{os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d')}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def table(made: dict[str, tuple[int, float]], runs: dict[str, list[dict[str, float]]],
          conns: int) -> str:
    lines = [f"| version | accuracy | req/s @{conns} | vs parent | p50 ms | p99 ms | failed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = None
    for label, (version, score) in made.items():
        r = sorted(runs[label], key=lambda x: x["rps"])[len(runs[label]) // 2]
        base = base or r["rps"]
        lines.append(f"| {label} (v{version}) | {score:.4f} | {r['rps']:,.0f} | "
                     f"{r['rps'] / base:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{int(r['failed'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
