"""The closed loop, measured end to end through the public endpoint.

Sets up what ``stratum up`` does in a temp home (ingest ``builtin:mnist``, train the cnn
with 2 ddp workers, promote it, deploy 2 replicas + the gateway following ``production``,
start ``stratum learn mnist`` as a process), then streams training-split digits as single
predictions, each followed by its label as feedback; after ``--rotate-after`` requests the
digits arrive rotated by 30-45°. Prints:

* accuracy per block of 200 requests, upright and rotated (the drift figure: rotated
  accuracy before the loop adapted, and where it is after 2,000 feedback events);
* for every promoted version, the feedback-to-live latency: from posting the last
  feedback its challenger was trained on to the first answer the gateway gave with it
  (median over promotions; the issue asks for the median of 5).

    .venv/bin/python bench/loop.py [--requests 3000] [--rotate-after 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stratum.config import load_settings
from stratum.control.client import ControlClient
from stratum.control.discovery import read_record
from stratum.data import ingest
from stratum.online.demo import digits, stream
from stratum.store import Store
from stratum.train import fit, parse_config

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rotate-after", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--home", type=Path, default=None, help="reuse a home (default: temp)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="stratum-loop-")) / "home"
    settings = load_settings(home=home)
    store = Store.open(settings)
    t0 = time.perf_counter()
    ingest("builtin:mnist", "mnist", store)
    if "production" not in store.meta.aliases("mnist"):
        cfg = yaml.safe_load((ROOT / "examples" / "mnist.yaml").read_text())
        mv = fit(parse_config({**cfg, "workers": args.workers}), settings, store=store)
        store.meta.set_alias("mnist", "production", mv.version, reason="bench/loop.py")
    setup_s = time.perf_counter() - t0
    client = ControlClient(settings)
    port = 8000 + os.getpid() % 1000
    dep = client.deploy(model="mnist@production", replicas=2, port=port, follow=True)
    client.wait_ready(dep["name"], dep["generation"], 300)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    with open(home / "logs" / "learner.log", "wb") as out:
        learner = subprocess.Popen(
            [sys.executable, "-m", "stratum.cli.main", "learn", "mnist", "--json"],
            env={**os.environ, **settings.child_env()}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        images, labels = digits(store, "mnist", "train")
        time.sleep(3)  # the learner loads its champion, holdout and replay sample
        t1 = time.perf_counter()
        result = stream(f"http://127.0.0.1:{port}", "mnist", images, labels,
                        requests=args.requests, rotate_after=args.rotate_after)
        stream_s = time.perf_counter() - t1
        time.sleep(5)  # the last challenger
    finally:
        learner.terminate()
        learner.wait(30)
        client.call("DELETE", "/deployments/mnist", start=False)
        rec = read_record(settings)
        if rec is not None:
            os.kill(int(rec["pid"]), 15)
    report(store, result, setup_s, stream_s, args)
    store.close()


def report(store: Store, result: object, setup_s: float, stream_s: float,
           args: argparse.Namespace) -> None:
    from stratum.online.demo import DemoResult

    assert isinstance(result, DemoResult)
    print(f"\nclosed loop on builtin:mnist, cnn, 2 replicas + gateway, learner process; "
          f"{result.sent} requests with feedback in {stream_s:.0f} s "
          f"({result.sent / stream_s:.1f} req/s incl. feedback), {result.errors} errors; "
          f"set-up (ingest + ddp training) {setup_s:.0f} s\n")
    print(f"{'requests':>13} {'inputs':>8} {'accuracy':>9}")
    for start, rot, acc in result.blocks:
        print(f"{start:>6}-{start + 199:<6} {'rotated' if rot else 'upright':>8} {acc:>9.3f}")
    rotated = [(s, a) for s, r, a in result.blocks if r]
    if rotated:
        feedback_2000 = [a for s, a in rotated if s + 200 <= args.rotate_after + 2000]
        print(f"\nrotated accuracy: first block {rotated[0][1]:.3f}; best within 2,000 "
              f"rotated feedback events {max(feedback_2000):.3f}; last block "
              f"{rotated[-1][1]:.3f} (target >= 0.9)")
    decisions = store.meta.events(subject="mnist", kind="online.decision", limit=1000)
    promoted = [e.payload for e in reversed(decisions) if e.payload["promote"]]
    print(f"\nchallengers: {len(decisions)}, promoted: {len(promoted)}")
    lat = []
    for p in promoted:
        mv = store.meta.model_version("mnist", p["version"])
        last = (mv.spec.get("lineage", {}).get("extra", {}).get("online", {})
                .get("last_request"))
        sec = result.live_latency(p["version"], last) if last else None
        if sec is not None:
            lat.append(sec)
        print(f"  v{p['version']:<4} recent {p['challenger_recent']:.3f} vs "
              f"{p['champion_recent']:.3f}  holdout {p['challenger_holdout']:.3f} vs "
              f"{p['champion_holdout']:.3f}  feedback-to-live "
              + (f"{sec:.2f} s" if sec is not None else "n/a (superseded before served)"))
    if lat:
        print(f"\nfeedback-to-live latency: median {statistics.median(lat):.2f} s over "
              f"{len(lat)} promotions (min {min(lat):.2f}, max {max(lat):.2f}; target <= 15 s)")


if __name__ == "__main__":
    main()
