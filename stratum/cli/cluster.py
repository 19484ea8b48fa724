"""``stratum cluster up / status / down``: a local multi-node Ray cluster for development
and tests, and what any cluster (``cluster.address``) holds."""

from __future__ import annotations

import typer
from rich.table import Table

from stratum.cli.context import console, get_ctx, print_json
from stratum.cluster import ClusterStatus, cluster_status, local
from stratum.cluster.procfs import alive
from stratum.errors import ClusterError, NotFoundError
from stratum.security.home import private_home

app = typer.Typer(no_args_is_help=True, help="A Ray cluster: a local one to develop on, "
                                             "status of any.")


def _show(status: ClusterStatus, as_json: bool, verb: str = "") -> None:
    if as_json:
        print_json(status.to_dict())
        return
    alive_nodes = sum(n.alive for n in status.nodes)
    kind = "local Ray cluster" if status.local else "Ray cluster"
    console.print(f"[bold green]{verb}[/] " if verb else "", end="")
    console.print(f"{kind} at {status.address}: {alive_nodes}/{len(status.nodes)} nodes alive")
    t = Table()
    for col in ("node", "role", "alive", "CPUs", "GPUs", "runs"):
        t.add_column(col)
    for n in status.nodes:
        t.add_row(n.ip, "head" if n.head else "worker", "yes" if n.alive else "[red]no[/]",
                  f"{n.cpus:g}", f"{n.gpus:g}", "\n".join(n.runs) or "-")
    for host, what in status.elsewhere.items():
        t.add_row(host, "-", "-", "-", "-", "\n".join(what))
    console.print(t)


@app.command("up")
def up(
    ctx: typer.Context,
    nodes: int = typer.Option(3, "--nodes", "-n", min=1, max=32,
                              help="Nodes: a head and NODES-1 workers, on 127.0.0.2, .3, …"),
    cpus: int = typer.Option(2, "--cpus", min=1, help="CPUs each node offers Ray."),
    gpus: int = typer.Option(0, "--gpus", min=0, help="GPUs each node offers Ray."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start a local multi-node Ray cluster on this machine (for development and tests;
    each node has its own loopback address). `stratum cluster down` stops it."""
    c = get_ctx(ctx)
    home = private_home(c.settings.home)
    with console.status("starting a local Ray cluster …") as spinner:
        local.start(home, nodes, cpus_per_node=cpus, gpus_per_node=gpus,
                    progress=lambda msg: spinner.update(msg))
    status = cluster_status(c.settings, c.store.meta)  # read back from the GCS
    _show(status, as_json, "started")
    if not as_json:
        console.print("Replicas go onto it with `stratum deploy … --backend ray` (or "
                      "cluster.backend: ray in the settings).")


@app.command("status")
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Nodes (address, alive, resources) of the cluster in cluster.address, or of this
    home's local cluster, and which Stratum replicas run on each."""
    c = get_ctx(ctx)
    _show(cluster_status(c.settings, c.store.meta), as_json)


@app.command("down")
def down(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Stop this home's local Ray cluster: every process it started."""
    home = get_ctx(ctx).settings.home
    found = local.read(home)
    if found is None:
        raise NotFoundError(f"no local Ray cluster runs for {home}",
                            hint="a cluster of your own (cluster.address) is stopped with "
                                 "Ray's tools, not here")
    pids = local.stop(home)
    left = [p for p in pids if alive(p)]
    if left:  # read back: nothing of it may be left
        raise ClusterError(f"processes {left} of the local cluster did not stop")
    if as_json:
        print_json({"stopped": found.address, "nodes": len(found.nodes), "processes": pids})
        return
    console.print(f"[bold green]stopped[/] the local Ray cluster at {found.address}: "
                  f"{len(found.nodes)} nodes, {len(pids)} processes")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="cluster", help="A Ray cluster: `up` a local one, `status`, "
                                             "`down`.")
