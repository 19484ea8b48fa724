"""``stratum deploy / undeploy / rollback / scale / stop`` (through the control plane) and
``stratum keys create / list / revoke`` (straight on the store)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from stratum.cli.audit import record_local
from stratum.cli.context import console, control_client, get_ctx, print_json
from stratum.control.client import ControlClient
from stratum.control.discovery import read_record
from stratum.control.lease import FileLease
from stratum.errors import ConfigError, NotFoundError, ServingError
from stratum.security.keys import SCOPES, generate_key, hash_key

_KEY_OPT = typer.Option(None, "--api-key", envvar="STRATUM_API_KEY",
                        help="An admin-scoped key [the home's admin.token file, made on "
                             "first use].")


def _client(ctx: typer.Context, api_key: str | None) -> ControlClient:
    return control_client(get_ctx(ctx).settings, api_key)


def _summary(dep: dict[str, Any]) -> dict[str, Any]:
    obs = dep.get("observed") or {}
    gw = obs.get("gateway") or {}
    base = gw.get("url")
    return {
        "name": dep["name"], "status": obs.get("status", dep.get("status")),
        "generation": dep["generation"], "url": base,
        "predict_url": f"{base}/v1/models/{dep['name']}:predict" if base else None,
        "infer_url": f"{base}/v2/models/{dep['name']}/infer" if base else None,
        "replicas": obs.get("replicas", []), "traffic": obs.get("traffic", []),
        "follows": (dep.get("spec") or {}).get("follow"), "notice": dep.get("notice"),
        "autoscale": (dep.get("spec") or {}).get("autoscale"),
    }


def _wait(client: ControlClient, dep: dict[str, Any], timeout: float, quiet: bool,
          ) -> dict[str, Any]:
    if quiet:
        return client.wait_ready(dep["name"], dep["generation"], timeout)
    with console.status(f"waiting for {dep['name']} …") as status:
        def show(d: dict[str, Any]) -> None:
            reps = (d.get("observed") or {}).get("replicas", [])
            ready = sum(1 for r in reps if r.get("state") == "ready")
            status.update(f"{d['name']}: {ready}/{len(reps)} replicas ready, "
                          f"{(d.get('observed') or {}).get('status', 'pending')}")
        return client.wait_ready(dep["name"], dep["generation"], timeout, show)


def _print(dep: dict[str, Any], as_json: bool, verb: str) -> None:
    s = _summary(dep)
    if as_json:
        print_json(s)
        return
    traffic = ", ".join(f"v{t['version']} {t['weight']:g}%" + (" (shadow)" if t.get("shadow")
                                                                  else "")
                        for t in s["traffic"]) or "-"
    console.print(f"[bold green]{verb}[/] {s['name']}: {len(s['replicas'])} replica(s), "
                  f"traffic {traffic}")
    if s["url"]:
        console.print(f"  gateway  {s['url']}\n  predict  POST {s['predict_url']}\n"
                      f"  infer    POST {s['infer_url']}")
    if s["follows"]:
        console.print(f"  follows  alias {s['follows']}")
    if a := s["autoscale"]:
        console.print(f"  autoscale {a['min_replicas']}..{a['max_replicas']} replicas, "
                      f"{a['target_inflight']:g} in flight each, scale-down cooldown "
                      f"{a['scale_down_cooldown_s']:g} s")
    if s["notice"]:
        console.print(f"[bold yellow]note:[/] {s['notice']}")


def stop_learners(home: Path, grace: float = 30.0) -> list[str]:
    """SIGTERM every running learner of ``home`` (found by its lock file) and wait for it
    to finish its batch; what was stopped, read back (its lock is free again)."""
    folder = home.expanduser().resolve() / "learners"
    out = []
    for path in sorted(folder.glob("*.lock")) if folder.exists() else []:
        lock = FileLease(path)
        if lock.try_acquire():  # nobody holds it: not running
            lock.release()
            continue
        try:
            pid = int(lock.holder())
            os.kill(pid, signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            continue  # it is exiting right now
        deadline = time.monotonic() + grace
        while not lock.try_acquire():
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        lock.release()
        out.append(f"the learner of {path.stem} (pid {pid})")
    return out


def register(app: typer.Typer) -> None:
    keys = typer.Typer(no_args_is_help=True, help="API keys with scopes (predict, feedback, "
                                                  "admin).")
    app.add_typer(keys, name="keys")

    @app.command()
    def deploy(
        ctx: typer.Context,
        ref: str = typer.Argument(..., help="NAME@VERSION or NAME@ALIAS"),
        replicas: int | None = typer.Option(None, "--replicas", "-r", min=1,
                                            help="Replica processes [1, or the current]."),
        port: int | None = typer.Option(None, "--port", help="Gateway port [8000]."),
        gateways: int | None = typer.Option(None, "--gateways", min=1, max=8,
                                            help="Gateway processes sharing the port [1, or "
                                                 "the current]; 2 survive a gateway's death."),
        canary: str | None = typer.Option(None, "--canary", help="NAME@VERSION:PERCENT"),
        shadow: str | None = typer.Option(None, "--shadow", help="NAME@VERSION to mirror to."),
        name: str | None = typer.Option(None, "--name", help="Deployment name [model name]."),
        policy: str | None = typer.Option(None, "--policy", help="least_outstanding, "
                                          "round_robin or consistent_hash."),
        follow: bool | None = typer.Option(None, "--follow/--pin", help="Roll onto every "
                                           "version the alias in REF moves to (e.g. promotions "
                                           "by the online learner) [--pin]."),
        min_replicas: int | None = typer.Option(None, "--min-replicas", min=0, help="Autoscale "
                                                "from this many replicas (0: scale to zero)."),
        max_replicas: int | None = typer.Option(None, "--max-replicas", min=1,
                                                help="Autoscale up to this many replicas."),
        target_inflight: float | None = typer.Option(
            None, "--target-inflight", help="Requests in flight per replica to aim at "
            "[control.autoscale_target_inflight, 8]."),
        cooldown: float | None = typer.Option(
            None, "--scale-down-cooldown", min=0, help="Seconds of lower load before scaling "
            "down [control.scale_down_cooldown_s, 60]."),
        auth: bool | None = typer.Option(None, "--auth/--no-auth", help="Need an API key "
                                         "for this deployment [the gateway's setting]; "
                                         "--no-auth serves it openly (logged loudly)."),
        rate_limit: float | None = typer.Option(None, "--rate-limit", min=0.001, help="Requests "
                                                "per second per key for this deployment."),
        rate_burst: int | None = typer.Option(None, "--rate-burst", min=1,
                                              help="Burst for --rate-limit [the rate]."),
        backend: str | None = typer.Option(
            None, "--backend", help="Where replicas run: local (processes here) or ray (actors "
            "on the cluster's nodes) [as deployed, else cluster.backend]."),
        cpus: float | None = typer.Option(None, "--cpus", min=0.01, help="CPUs each replica "
                                          "asks of a Ray node [cluster.replica_cpus, 1]."),
        gpus: float | None = typer.Option(None, "--gpus", min=0, help="GPUs each replica asks "
                                          "of a Ray node [cluster.replica_gpus, 0]."),
        timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for ready."),
        no_wait: bool = typer.Option(False, "--no-wait", help="Return once recorded."),
        as_json: bool = typer.Option(False, "--json"),
        api_key: str | None = _KEY_OPT,
    ) -> None:
        """Deploy a model version behind a gateway; deploying another version of a deployed
        model is a rolling update with zero failed requests. --min/--max-replicas let load
        decide the replica count. Several deployments may share one --port, each with its
        own traffic split, auth and rate limit."""
        if backend not in (None, "local", "ray"):
            raise ConfigError(f"--backend {backend!r}: use local or ray")
        client = _client(ctx, api_key)
        dep = client.deploy(model=ref, name=name, replicas=replicas, port=port, canary=canary,
                            shadow=shadow, policy=policy, follow=follow, gateways=gateways,
                            min_replicas=min_replicas, max_replicas=max_replicas,
                            target_inflight=target_inflight, scale_down_cooldown_s=cooldown,
                            require_auth=auth, rate_limit_per_s=rate_limit,
                            rate_limit_burst=rate_burst, backend=backend, cpus=cpus, gpus=gpus)
        notice = dep.get("notice")
        if not no_wait:
            dep = _wait(client, dep, timeout, as_json)
        _print(dep | ({"notice": notice} if notice else {}), as_json,
               "deployed" if not no_wait else "recorded")

    @app.command()
    def undeploy(ctx: typer.Context, name: str = typer.Argument(...),
                 api_key: str | None = _KEY_OPT) -> None:
        """Stop a deployment's gateway and replicas."""
        _client(ctx, api_key).call("DELETE", f"/deployments/{name}", start=False)
        console.print(f"undeployed {name}")

    @app.command()
    def rollback(ctx: typer.Context, name: str = typer.Argument(...),
                 timeout: float = typer.Option(300.0, "--timeout"),
                 as_json: bool = typer.Option(False, "--json"),
                 api_key: str | None = _KEY_OPT) -> None:
        """Roll back to the version deployed before the current one."""
        client = _client(ctx, api_key)
        dep = client.call("POST", f"/deployments/{name}/rollback")
        notice = dep.get("notice")
        _print(_wait(client, dep, timeout, as_json) | ({"notice": notice} if notice else {}),
               as_json, "rolled back")

    @app.command()
    def scale(ctx: typer.Context, name: str = typer.Argument(...),
              replicas: int = typer.Argument(..., min=1),
              timeout: float = typer.Option(300.0, "--timeout"),
              as_json: bool = typer.Option(False, "--json"),
              api_key: str | None = _KEY_OPT) -> None:
        """Change the number of replicas of a deployment (fixed: autoscaling turns off)."""
        client = _client(ctx, api_key)
        dep = client.call("POST", f"/deployments/{name}/scale", {"replicas": replicas})
        notice = dep.get("notice")
        _print(_wait(client, dep, timeout, as_json) | ({"notice": notice} if notice else {}),
               as_json, "scaled")

    @app.command()
    def stop(ctx: typer.Context) -> None:
        """Stop the background control plane (with every replica and gateway it runs)
        and the home's learners."""
        settings = get_ctx(ctx).settings
        stopped = []
        rec = read_record(settings)
        if rec is not None:
            os.kill(int(rec["pid"]), signal.SIGTERM)
            deadline = time.monotonic() + 30
            while read_record(settings) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            if read_record(settings) is not None:
                raise ServingError(f"the control plane (pid {rec['pid']}) did not stop "
                                   "within 30 s", hint="see logs/control.log in the home")
            stopped.append(f"the control plane (pid {rec['pid']})")
        stopped += stop_learners(settings.home)
        if not stopped:
            raise NotFoundError(f"nothing to stop: no control plane or learner runs for "
                                f"{settings.home}")
        console.print("stopped " + ", ".join(stopped))

    @keys.command("create")
    def keys_create(
        ctx: typer.Context, name: str = typer.Argument(..., help="Who the key is for."),
        scope: list[str] = typer.Option(["predict"], "--scope", "-s",
                                        help="predict, feedback or admin; repeat for several."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Create a key; it is shown once and stored only as a salted hash."""
        bad = [s for s in scope if s not in SCOPES]
        if bad:
            raise ConfigError(f"unknown scope(s) {', '.join(bad)}; use {', '.join(SCOPES)}")
        key, key_id = generate_key()
        get_ctx(ctx).store.meta.add_api_key(key_id, name, hash_key(key), sorted(set(scope)))
        record_local(ctx, "keys.create", name, {"key_id": key_id, "scopes": sorted(set(scope))})
        if as_json:
            print_json({"key": key, "key_id": key_id, "name": name, "scopes": scope})
            return
        console.print(f"key {key_id} for {name} ({', '.join(scope)}) — shown once:")
        console.print(key, highlight=False)

    @keys.command("list")
    def keys_list(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        """List keys (ids, names, scopes; never the keys)."""
        rows: list[dict[str, Any]] = [{"key_id": k.key_id, "name": k.name, "scopes": k.scopes,
                 "created_at": k.created_at.isoformat(),
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                for k in get_ctx(ctx).store.meta.api_keys()]
        if as_json:
            print_json(rows)
            return
        t = Table(title="API keys")
        for col in ("key id", "name", "scopes", "created", "revoked"):
            t.add_column(col)
        for r in rows:
            t.add_row(str(r["key_id"]), str(r["name"]), ", ".join(r["scopes"]),
                      str(r["created_at"])[:19], str(r["revoked_at"] or "-")[:19])
        console.print(t)

    @keys.command("revoke")
    def keys_revoke(ctx: typer.Context, key_id: str = typer.Argument(...)) -> None:
        """Revoke a key (gateways stop accepting it within gateway.auth_cache_s)."""
        get_ctx(ctx).store.meta.revoke_api_key(key_id)
        record_local(ctx, "keys.revoke", key_id, {"key_id": key_id})
        console.print(f"revoked {key_id}")
