"""What observability costs on the hot path: one replica (cnn, mlp) at 64 concurrent
single-sample OIP requests, four ways:

- ``metrics stripped``: the replica with its per-request and per-batch metric calls made
  no-ops (a bench-only patch: the shipped replica has no switch for them);
- ``as shipped``: metrics on, tracing off (the default);
- ``tracing on``: every request traced (``monitor.trace_sample_ratio`` 1.0) and exported over
  OTLP/HTTP to a receiver process that reads and drops the spans;
- ``tracing, 10% sampled``: the same with ``trace_sample_ratio`` 0.1.

Then the in-process cost of the pieces per request: the metric observations, and making the
replica's four spans of a request.

    .venv/bin/python bench/observability.py                 # both models
    .venv/bin/python bench/observability.py --models mlp --duration 5 --repeat 3

Load comes from wrk, as in bench/serve.py (whose helpers this reuses).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import serve as sb  # noqa: E402  (bench/serve.py)

from stratum.config import load_settings  # noqa: E402
from stratum.config.monitor import MonitorSettings  # noqa: E402
from stratum.security.tokens import replica_secret  # noqa: E402
from tests.services import free_port, started  # noqa: E402

# A replica whose metric calls do nothing: the baseline that shows what they cost.
STRIPPED = (
    "import sys; from stratum.serve.metrics import ReplicaMetrics as M; "
    "M.observe = lambda *a: None; M.on_batch = lambda *a: None; "
    "from stratum.serve.__main__ import main; sys.exit(main(sys.argv[1:]))")

# An OTLP/HTTP receiver that reads each export and answers 200 (spans dropped).
RECEIVER = (
    "import sys; from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "class H(BaseHTTPRequestHandler):\n"
    "    def do_POST(self):\n"
    "        self.rfile.read(int(self.headers['content-length']))\n"
    "        self.send_response(200); self.send_header('content-length', '0')\n"
    "        self.end_headers()\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('content-length', '0')\n"
    "        self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n")


def replica(env: dict[str, str], model: str, body: Path, lua: Path, seconds: float,
            logs: Path, tag: str, stripped: bool = False) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--model", f"{model}@1", "--port", str(port)]
    cmd = ([sys.executable, "-c", STRIPPED, *args] if stripped
           else [sys.executable, "-m", "stratum.serve", *args])
    with started(cmd, ready_url=base + "/v2/health/ready", env=env,
                 log=logs / f"{model}-{tag}.log"):
        url = f"{base}/v2/models/{model}/infer"
        secret = env["STRATUM_REPLICA_SECRET"]
        sb.wrk(url, body, lua, 64, 2, secret)  # warm
        runs = sorted((sb.wrk(url, body, lua, 64, seconds, secret) for _ in range(sb.REPEAT)),
                      key=lambda r: r["rps"])
        return runs[len(runs) // 2]


def micro(endpoint: str) -> dict[str, float]:
    """Microseconds per request of the metric calls and of the traced path's spans."""
    from stratum.monitor.tracing import Tracer
    from stratum.serve.batcher import Timing
    from stratum.serve.metrics import ReplicaMetrics

    m = ReplicaMetrics("x")
    n = 200_000
    observe = timeit.timeit(lambda: m.observe("/v2/models/{name}/infer", 200, 0.001),
                            number=n) / n * 1e6
    batch = timeit.timeit(lambda: m.on_batch(8, 0.001, 0.002), number=n) / n * 1e6
    # Exported to the receiver on the SDK's own thread, as in a replica.
    tracer = Tracer(MonitorSettings(otlp_endpoint=endpoint), "bench")
    t = Timing(1.0, 1.001, 1.002, 1.003, 1.004, 8, 2)

    def request() -> None:
        span = tracer.request("replica.request", None, "rid", **{"url.path": "/x"})
        tracer.child(span, "replica.queue_wait", t.submitted, t.taken, a=1)
        tracer.child(span, "replica.batch", t.taken, t.done, a=1)
        tracer.child(span, "replica.forward", t.forward_start, t.forward_end, a=1)
        Tracer.end(span, status=200)

    k = 5_000
    spans = timeit.timeit(request, number=k) / k * 1e6
    tracer.shutdown()
    return {"metrics_observe_us": observe, "metrics_batch_us": batch, "four_spans_us": spans}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    ap.add_argument("--repeat", type=int, default=1, help="median of N wrk runs")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install -y wrk`", file=sys.stderr)
        return 2
    sb.REPEAT = args.repeat
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="stratum-obs-bench-") as tmp_s:
        tmp = Path(tmp_s)
        logs = tmp / "logs"
        logs.mkdir()
        lua = tmp / "bench.lua"
        lua.write_text(sb.LUA)
        rport = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(rport)],
                                    start_new_session=True)
        try:
            off = load_settings(home=tmp / "home")
            on = off.model_copy(update={"monitor": MonitorSettings(
                otlp_endpoint=f"http://127.0.0.1:{rport}/v1/traces")})
            sb.register(off)
            secret = {"STRATUM_REPLICA_SECRET": replica_secret()}
            env_off = {**off.child_env(), **secret}
            env_on = {**on.child_env(), **secret}
            tenth = on.model_copy(update={"monitor": on.monitor.model_copy(
                update={"trace_sample_ratio": 0.1})})
            env_tenth = {**tenth.child_env(), **secret}
            for key in args.models.split(","):
                model, _, shape = sb.MODELS[key]
                body = sb.body_file(tmp, model, shape)
                results[key] = {
                    "metrics stripped": replica(env_off, model, body, lua, args.duration,
                                                logs, "stripped", stripped=True),
                    "as shipped": replica(env_off, model, body, lua, args.duration, logs,
                                          "shipped"),
                    "tracing on": replica(env_on, model, body, lua, args.duration, logs,
                                          "traced"),
                    "tracing, 10% sampled": replica(env_tenth, model, body, lua,
                                                    args.duration, logs, "sampled"),
                }
                print(f"{key}: done", file=sys.stderr)
            costs = micro(f"http://127.0.0.1:{rport}/v1/traces")
        finally:
            receiver.terminate()
            receiver.wait(10)
    print(table(results))
    print(f"\nper request, in process: metric observations "
          f"{costs['metrics_observe_us']:.2f} µs (+ {costs['metrics_batch_us']:.2f} µs per "
          f"batch); the replica's four spans {costs['four_spans_us']:.1f} µs "
          f"(tracing off: one `is None` test)")
    print(f"load generator: wrk 1 thread, 64 connections, {args.duration:g} s runs, median of "
          f"{args.repeat}; {os.cpu_count()} cores shared by wrk, the replica and (traced) the "
          f"receiver; {time.strftime('%Y-%m-%d')}")
    return 0


def table(results: dict[str, Any]) -> str:
    rows = ["| model | replica | req/s | p50 ms | p99 ms | failed | vs as shipped |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for key, runs in results.items():
        base = runs["as shipped"]["rps"]
        for label, r in runs.items():
            rows.append(f"| {key} | {label} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                        f"{r['p99_ms']:.2f} | {int(r['failed'])} | {r['rps'] / base - 1:+.1%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
