"""``stratum up``: the whole loop on embedded defaults, reusing whatever already exists.

ingest ``builtin:mnist`` → train the cnn with 2 ddp workers → promote it to
``production`` → deploy 2 replicas and the gateway (following ``production``) → start the
online learner → print the URLs. ``--demo`` then streams digits with feedback, rotated
after a while, and shows the loop adapting. Ctrl-C stops every process it started.

Unlike a bare ``stratum deploy``, ``up`` turns ``gateway.require_auth`` on for everything it
starts and makes a predict+feedback key in ``{home}/client.key`` (0600, reused by the next
``up``); the curl lines it prints read the key from there.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import typer
from rich.live import Live
from rich.table import Table

from stratum.cli.context import CliContext, console, control_client, get_ctx
from stratum.cli.data import ingest_cmd
from stratum.cli.serving import _print, _wait
from stratum.cli.train import train as train_cmd
from stratum.config.child import start_python
from stratum.errors import ConfigError, NotFoundError
from stratum.security.tokens import ADMIN_TOKEN_FILE, ensure_key_file

if TYPE_CHECKING:
    from stratum.online.demo import DemoTick

CLIENT_KEY_FILE = "client.key"

# Shipped inside the package (package data), so `stratum up` works from a plain install;
# the repository's examples/ is a link to this folder.
_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def up(
    ctx: typer.Context,
    demo: bool = typer.Option(False, "--demo", help="Stream digits with feedback (rotated "
                              "after --rotate-after) and show the loop adapting."),
    port: int = typer.Option(8000, "--port", help="Gateway port."),
    replicas: int = typer.Option(2, "--replicas", min=1),
    workers: int = typer.Option(2, "--workers", min=1, help="ddp workers for training."),
    requests: int = typer.Option(3000, "--requests", help="Demo requests to send."),
    rotate_after: int = typer.Option(1000, "--rotate-after", help="Demo: rotate from here."),
    config: Path = typer.Option(_EXAMPLES / "mnist.yaml", "--train-config",
                                help="Training config for the first version."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Leave gateway.require_auth off: "
                                 "anyone who reaches the port may predict and post feedback "
                                 "(every process then logs a warning)."),
) -> None:
    """Run the whole loop on embedded defaults; prints the URLs and a curl example."""
    c = get_ctx(ctx)
    name = "mnist"
    # SIGTERM is a stop request like Ctrl-C: the same clean-up below runs for both, so
    # nothing this command started (learner, deployment, control plane) is left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if not no_auth:  # handed to every process started from here
        c.settings = c.settings.model_copy(update={"gateway": c.settings.gateway.model_copy(
            update={"require_auth": True})})
    _ensure_data(ctx, c, name)
    _ensure_model(ctx, c, name, config, workers)
    key_file = c.settings.home.expanduser().resolve() / CLIENT_KEY_FILE
    key = None if no_auth else ensure_key_file(key_file, c.store.meta, "stratum-up",
                                               ["feedback", "predict"])
    client = control_client(c.settings)
    stop = threading.Event()
    learner: subprocess.Popen[bytes] | None = None
    try:
        dep = client.deploy(model=f"{name}@production", replicas=replicas, port=port,
                            follow=True)
        dep = _wait(client, dep, 300.0, quiet=False)
        _print(dep, False, "deployed")
        learner = _start_learner(c, name)
        gateway = (dep.get("observed") or {}).get("gateway", {}).get("url") or \
            f"{c.settings.gateway.tls.scheme}://127.0.0.1:{port}"
        if key is not None:
            _check_auth_is_on(gateway, name, client.verify)
        _print_usage(c, name, gateway, key_file if key is not None else None,
                     client.url(start=False))
        if demo:
            _demo(c, name, gateway, requests, rotate_after, stop,
                  {"authorization": f"Bearer {key}"} if key is not None else {},
                  client.verify)
            console.print("demo finished; serving until Ctrl-C")
        while learner.poll() is None:
            time.sleep(0.5)
        raise ConfigError(f"the learner exited with {learner.returncode}",
                          hint=f"see {c.settings.home / 'logs' / 'learner.log'}")
    except KeyboardInterrupt:
        console.print("\nstopping …")
    finally:
        stop.set()
        if learner is not None:
            _stop(learner)
        try:
            client.call("DELETE", f"/deployments/{name}", start=False)
        except Exception as exc:  # the control plane may already be gone
            console.print(f"[yellow]could not undeploy {name}: {exc}[/]")
        _stop_control(c)
        console.print("stopped the learner, the deployment and the control plane")


def _ensure_data(ctx: typer.Context, c: CliContext, name: str) -> None:
    try:
        dv = c.store.meta.dataset_version(name)
        console.print(f"dataset {name}@{dv.version[:12]} exists ({dv.num_rows:,} rows)")
    except NotFoundError:
        ingest_cmd(ctx, source="builtin:mnist", name=name, shards=None, replicas=None,
                   shard_key=None, schema=None, backend=None, as_json=False)


def _ensure_model(ctx: typer.Context, c: CliContext, name: str, config: Path,
                  workers: int) -> None:
    meta = c.store.meta
    if not meta.model_versions(name):
        # every option named: typer fills defaults only when it parses the command line
        train_cmd(ctx, config=config, workers=workers, strategy=None, backend=None,
                  gpus_per_worker=None, resume=False, epochs=None, name=name, as_json=False)
    aliases = meta.aliases(name)
    if "production" not in aliases:
        version = aliases.get("candidate") or meta.model_version(name).version
        meta.set_alias(name, "production", version, reason="stratum up: first version")
        console.print(f"promoted {name} v{version} to production")
    else:
        console.print(f"{name} production is v{aliases['production']}")


def _start_learner(c: CliContext, name: str) -> subprocess.Popen[bytes]:
    logs = c.settings.home.expanduser().resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "learner.log", "ab") as out:
        return start_python(
            # --json: its reports are JSON lines too, like every log line in the file
            "stratum.cli.main", ["learn", name, "--json"], env=c.settings.child_env(), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _stop_control(c: CliContext) -> None:
    from stratum.control.discovery import read_record

    rec = read_record(c.settings)
    if rec is not None:
        pid = int(rec["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while read_record(c.settings) is not None and time.monotonic() < deadline:
            try:  # we may have started it: reap it, or it lingers as a zombie that "lives"
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)


def _example_request(c: CliContext, name: str) -> Path:
    from stratum.online.demo import digits  # torch: imported once the loop is up

    images, _ = digits(c.store, name, "test")
    path = c.settings.home.expanduser().resolve() / "example-request.json"
    path.write_bytes(orjson.dumps({"instances": [images[0].tolist()]}))
    return path


def _print_usage(c: CliContext, name: str, gateway: str, key_file: Path | None,
                 control: str) -> None:
    example = _example_request(c, name)
    auth = f"-H \"authorization: Bearer $(cat {key_file})\" " if key_file else ""
    need = f" Requests need the key in {key_file}." if key_file else " Auth is OFF."
    console.print(
        f"\n[bold]Stratum is up.[/]{need}\n"
        f"  predict   curl -s {auth}-H 'content-type: application/json' "
        f"--data @{example} {gateway}/v1/models/{name}:predict -D - \n"
        f"  feedback  curl -s {auth}-H 'content-type: application/json' "
        f"{gateway}/v1/models/{name}/feedback "
        "-d '{\"request_id\": \"<x-request-id>\", \"label\": 7}'\n"
        f"  dashboard {control}/ui/  (log in with the admin token: cat "
        f"{c.settings.home.expanduser().resolve() / ADMIN_TOKEN_FILE})\n"
        f"  metrics   {gateway}/metrics\n  status    stratum status · stratum models history "
        f"{name}\n  learner   log in {c.settings.home / 'logs' / 'learner.log'}\n",
        soft_wrap=True)


def _check_auth_is_on(gateway: str, name: str, verify: ssl.SSLContext) -> None:
    """Read back what `up` promises: an unauthenticated predict is refused. A control plane
    started earlier by `stratum deploy` keeps its own settings, and so its open gateways."""
    try:
        status = httpx.post(f"{gateway}/v1/models/{name}:predict", json={}, timeout=10,
                            verify=verify).status_code
    except httpx.HTTPError:
        return
    if status != 401:
        console.print(f"[bold yellow]warning:[/] {gateway} answered {status} without a key: "
                      "the control plane already running has auth off; `stratum stop` and "
                      "`stratum up` again to turn it on")


def _demo(c: CliContext, name: str, url: str, requests: int, rotate_after: int,
          stop: threading.Event, headers: dict[str, str], verify: ssl.SSLContext) -> None:
    from stratum.online.demo import digits, stream

    images, labels = digits(c.store, name, "train")
    meta = c.store.meta
    state: dict[str, Any] = {"tick": None}

    def table() -> Table:
        t = Table(title="Stratum demo: predictions → feedback → online learning")
        for col in ("requests", "inputs", "served version", "accuracy (last 200)",
                    "versions", "production"):
            t.add_column(col)
        tick: DemoTick | None = state["tick"]
        if tick is not None:
            t.add_row(f"{tick.sent:,}/{requests:,}", "rotated 30-45°" if tick.rotated else
                      "upright", f"v{tick.version}",
                      f"{tick.window_accuracy:.3f}" if tick.window_accuracy is not None else "-",
                      ", ".join(f"v{v}" for v in tick.versions_seen),
                      f"v{state.get('production', '?')}")
        return t

    with Live(table(), console=console, refresh_per_second=4) as live:
        def on_tick(t: DemoTick) -> None:
            state["tick"] = t
            if t.sent % 50 == 0:
                state["production"] = meta.aliases(name).get("production")
            live.update(table())

        result = stream(url, name, images, labels, requests=requests, rotate_after=rotate_after,
                        headers=headers, should_stop=stop.is_set, on_tick=on_tick,
                        verify=verify)
    for start, rot, acc in result.blocks:
        console.print(f"  requests {start:>5}-{start + 199:<5} {'rotated' if rot else 'upright'}"
                      f"  accuracy {acc:.3f}")
    console.print(f"  versions served: {' → '.join(f'v{v}@{i}' for i, v in result.versions)}")
