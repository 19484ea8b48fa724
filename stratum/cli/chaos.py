"""``stratum chaos NAME``: fault scenarios against a live deployment, under load the
command makes itself on the deployment's own gateway address, and a table of what each
cost: requests, failed requests (against the scenario's bar) and the time to recover.

It acts as an operator would, from outside: the control plane's API, the deployment's
observed document in the store (pids, ports), signals, HTTP. What a scenario changes in the
wanted state is put back. Scenarios that cannot run on this deployment are listed as
skipped with the reason. Exit code 1 when any scenario failed more requests than its bar
or did not recover. Details: docs/control.md, "Chaos".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import typer
from rich.table import Table
from rich.text import Text

from stratum.cli.audit import record_local
from stratum.cli.chaos_load import Tally, sample_body
from stratum.cli.chaos_run import Outcome, run_all
from stratum.cli.chaos_scenarios import SCENARIOS, Options
from stratum.cli.chaos_target import NotRecovered, Target
from stratum.cli.context import console, get_ctx, print_json
from stratum.errors import ConfigError, ServingError
from stratum.security.keys import generate_key, hash_key

DEFAULT = list(SCENARIOS)  # in this order
KEY_NAME = "stratum-chaos"


def chaos(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The deployment to work on."),
    scenarios: str | None = typer.Option(
        None, "--scenarios", "-s", help="Comma-separated, run in that order (default: all of "
        + ", ".join(DEFAULT) + ")."),
    duration: float = typer.Option(10.0, "--duration", min=1.0,
                                   help="Seconds of load per scenario, at least."),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=64,
                                    help="Clients, one request in flight each."),
    timeout: float = typer.Option(90.0, "--timeout", min=1.0,
                                  help="Seconds each wait (recovery, a rollout) may take."),
    gap: float = typer.Option(3.0, "--gap", min=0.0,
                              help="Seconds between the two kills of replica-kill-2."),
    include_services: bool = typer.Option(
        False, "--include-services", help="Also restart this machine's Redis and "
        "PostgreSQL when the deployment uses them (it disturbs everyone using them)."),
    request: Path | None = typer.Option(
        None, "--request", help="A JSON predict body to send (default: one sample of the "
        "model's input shape, every value 0.5)."),
    key: str | None = typer.Option(
        None, "--key", envvar="STRATUM_CHAOS_KEY", help="A predict (+feedback) key for the "
        "load (default, when the gateway asks for one: a temporary key, revoked at the end)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document."),
) -> None:
    """Fault scenarios (replica, gateway and control-plane kills, a rolling update, a hot
    swap, a canary and its rollback, the learner, Redis and PostgreSQL restarts) against a
    live deployment under a bounded load; prints requests, failed and time to recover."""
    c = get_ctx(ctx)
    chosen = _names(scenarios)
    o = Options(concurrency=concurrency, duration=duration, timeout=timeout,
                include_services=include_services, gap_s=gap)
    t = Target(c.settings, name)
    temp_key: str | None = None
    try:
        t.client.url()  # like any command: start a control plane if none runs
        try:
            t.wait_settled(timeout, what=f"{name} ready")
        except NotRecovered as exc:
            raise ServingError(f"deployment {name} is not ready ({t.doc()['status']}): {exc}",
                               hint="see `stratum status`") from exc
        url = t.url()
        body = orjson.loads(request.read_bytes()) if request else sample_body(t.model_spec())
        if key is None and _probe(t, body, {}) == 401:
            key, temp_key = _temporary_key(ctx)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        if (status := _probe(t, body, headers)) != 200:
            raise ConfigError(f"a predict on {url} answered {status}",
                              hint="check --request (the body) and --key")
        outcomes = _run(t, [SCENARIOS[n] for n in chosen], o, headers, body, as_json)
    finally:
        try:
            t.restore(timeout)  # a no-op unless interrupted mid-scenario
        except Exception as exc:
            console.print(f"[yellow]could not restore {name}'s wanted state: {exc}[/]")
        if temp_key is not None:
            c.store.meta.revoke_api_key(temp_key)
            record_local(ctx, "keys.revoke", KEY_NAME, {"key_id": temp_key})
        t.close()
    passed = all(x.status != "failed" for x in outcomes)
    if as_json:
        print_json({"deployment": name, "url": url, "concurrency": concurrency,
                    "duration_s": duration, "passed": passed,
                    "scenarios": [x.to_dict() for x in outcomes]})
    else:
        _table(name, outcomes, o)
    if not passed:
        raise typer.Exit(1)


def _names(text: str | None) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()] if text else DEFAULT
    bad = [n for n in names if n not in SCENARIOS]
    if bad or not names:
        raise ConfigError(f"unknown scenario(s) {', '.join(bad) or '(none given)'}",
                          hint="choose from " + ", ".join(DEFAULT))
    return names


def _probe(t: Target, body: dict[str, Any], headers: dict[str, str]) -> int:
    try:
        return httpx.post(f"{t.url()}/v1/models/{t.name}:predict", json=body,
                          headers=headers, timeout=10.0, verify=t.verify).status_code
    except httpx.HTTPError as exc:
        raise ServingError(f"the gateway at {t.url()} did not answer: {exc}") from exc


def _temporary_key(ctx: typer.Context) -> tuple[str, str]:
    secret, key_id = generate_key()
    scopes = ["feedback", "predict"]
    get_ctx(ctx).store.meta.add_api_key(key_id, KEY_NAME, hash_key(secret), scopes)
    record_local(ctx, "keys.create", KEY_NAME, {"key_id": key_id, "scopes": scopes})
    return secret, key_id


def _run(t: Target, chosen: list[Any], o: Options, headers: dict[str, str],
         body: dict[str, Any], quiet: bool) -> list[Outcome]:
    if quiet:
        return run_all(t, chosen, o, headers=headers, body=body)
    with console.status(f"chaos on {t.name} …") as status:
        def show(scenario: str, what: str, tally: Tally) -> None:
            status.update(f"[bold]{scenario}[/]: {what} — {tally.requests:,} requests, "
                          f"{tally.failed:,} failed")
        return run_all(t, chosen, o, headers=headers, body=body, progress=show)


def _table(name: str, outcomes: list[Outcome], o: Options) -> None:
    table = Table(title=f"stratum chaos {name} ({o.concurrency} clients, "
                        f"≥ {o.duration:g} s each)")
    table.add_column("scenario", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for col in ("requests", "failed", "bar", "time to recover"):
        table.add_column(col, justify="right", no_wrap=True)
    colour = {"passed": "green", "failed": "bold red", "skipped": "yellow"}
    for x in outcomes:
        ran = x.status != "skipped"
        table.add_row(
            x.scenario, f"[{colour[x.status]}]{x.status}[/]",
            f"{x.requests:,}" if ran else "-", f"{x.failed:,}" if ran else "-",
            "-" if x.bar is None else f"≤ {x.bar}",
            "-" if x.recover_s is None else f"{x.recover_s:.1f} s")
    console.print(table)
    for x in outcomes:
        console.print(Text.assemble("  ", (x.scenario, "bold"), f": {x.note}"))
        if x.errors:
            console.print(f"    failures: {'; '.join(x.errors)}", highlight=False,
                          markup=False)


def register(app: typer.Typer) -> None:
    app.command("chaos")(chaos)


__all__ = ["DEFAULT", "chaos", "register"]
