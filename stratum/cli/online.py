"""``stratum learn NAME`` (the online learner) and ``stratum up`` (the whole loop)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from stratum.cli.context import console, get_ctx, print_json
from stratum.config import Settings
from stratum.control.lease import FileLease
from stratum.errors import ConflictError
from stratum.monitor.logging import setup_logging
from stratum.queue import feedback_stream, open_queue
from stratum.security.access import warn_if_auth_off

if TYPE_CHECKING:
    from stratum.online.exporter import MetricsServer
    from stratum.online.learner import Learner, Update


def describe_update(name: str, u: Update) -> str:
    d = u.decision
    verdict = "[bold green]promoted[/]" if d.promote else "[yellow]rejected[/]"
    what = f"v{u.version}" if u.version is not None else f"run {u.run_id[:8]}"
    return (f"{name} {what} (from v{u.parent}, {u.rows} new rows, {u.trigger}): "
            f"{verdict} — recent {d.challenger_recent:.3f} vs {d.champion_recent:.3f}, "
            f"holdout {d.challenger_holdout:.3f} vs {d.champion_holdout:.3f}")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def learner_lock(home: Path, name: str) -> FileLease:
    folder = home.expanduser().resolve() / "learners"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return FileLease(folder / f"{name}.lock")


def learn(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Model name; its `production` version is the champion."),
    seconds: float | None = typer.Option(None, "--seconds", help="Stop after this long."),
    once: bool = typer.Option(False, "--once", help="Take the feedback waiting now, make "
                              "one challenger from it, and stop."),
    as_json: bool = typer.Option(False, "--json", help="One JSON line per challenger."),
) -> None:
    """Consume feedback, fine-tune challengers and promote the ones that win the gate.
    Runs until Ctrl-C (or SIGTERM); every decision is an event (`stratum models history`)."""
    # The learner fine-tunes with torch, and the control plane's record helpers bring
    # FastAPI: imported by the command that uses them, not by every `stratum` command.
    from stratum.control.observe import learner_record
    from stratum.online.learner import Learner

    c = get_ctx(ctx)
    setup_logging(c.settings.log_level, component="learner", model=name)
    warn_if_auth_off(logging.getLogger("stratum.online"), c.settings.gateway.require_auth,
                     "the gateway port of a deployment")

    def report(u: Update) -> None:
        if as_json:
            print_json({"model": name, **u.to_dict()})
        else:
            console.print(describe_update(name, u))

    # One learner per model and home, and `stratum stop` finds it: a lock file with its pid.
    lock = learner_lock(c.settings.home, name)
    if not lock.try_acquire():
        raise ConflictError(f"a learner for {name} already runs (pid {lock.holder()})",
                            hint="`stratum stop` stops it")
    learner = Learner(c.settings, c.store, name, on_update=report)
    if not as_json:
        console.print(f"learning {name} from feedback; champion v{learner.champion.version} "
                      f"(holdout {learner.champion.holdout_score:.3f}). Ctrl-C stops.")
    if once:
        if learner.drain() is None and not as_json:
            console.print("no feedback was waiting")
        return
    stop = threading.Event()
    _stop_on_signals(stop)
    if seconds is not None:
        threading.Timer(seconds, stop.set).start()
    server = _serve_metrics(c.settings, learner, quiet=as_json)
    try:
        learner.run(stop)
    finally:
        if server is not None:
            server.stop()
            learner_record(c.settings.home, name).unlink(missing_ok=True)
    s = learner.stats
    if not as_json:
        console.print(f"stopped: {s.received} feedback received, {s.applied} rows applied, "
                      f"{len(s.updates)} challengers, "
                      f"{sum(u.decision.promote for u in s.updates)} promoted")


def _serve_metrics(settings: Settings, learner: Learner, *, quiet: bool
                   ) -> MetricsServer | None:
    """The learner's /metrics (``monitor.learner_metrics_port``), recorded where the
    control plane looks for it (its alert rules and Prometheus discovery)."""
    from stratum.control.observe import write_learner_record
    from stratum.online.exporter import MetricsServer

    cfg = settings.monitor
    if cfg.learner_metrics_port is None:
        return None
    assert settings.queue_url
    backlog = open_queue(settings.queue_url, feedback_stream(learner.name))
    learner.metrics.watch(learner, backlog.size)
    server = MetricsServer(learner.metrics.registry, cfg.learner_metrics_host,
                           cfg.learner_metrics_port)
    write_learner_record(settings.home, learner.name, server.url)
    if not quiet:
        console.print(f"metrics at {server.url}/metrics")
    return server


def register(app: typer.Typer) -> None:
    app.command("learn")(learn)
    from stratum.cli.up import up

    app.command("up")(up)


__all__ = ["describe_update", "learn", "register"]
