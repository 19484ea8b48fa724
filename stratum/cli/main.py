"""The ``stratum`` command: global options, then one group or command per concern."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from stratum.cli import artifacts as artifact_cmds
from stratum.cli import audit as audit_cmds
from stratum.cli import data as data_cmds
from stratum.cli import models as model_cmds
from stratum.cli import status as status_cmds
from stratum.cli.context import CliContext, err_console
from stratum.config import load_settings
from stratum.errors import StratumError

app = typer.Typer(
    name="stratum",
    help="Stratum: from raw data to a highly available, self-improving prediction service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML settings file (else $STRATUM_CONFIG)."
    ),
    home: Path | None = typer.Option(None, "--home", help="Stratum home folder [.stratum]."),
    metadata_url: str | None = typer.Option(None, "--metadata-url", help="SQLAlchemy URL."),
    artifact_url: str | None = typer.Option(None, "--artifact-url", help="Folder or s3:// URL."),
) -> None:
    ctx.obj = CliContext(
        load_settings(config, home=home, metadata_url=metadata_url, artifact_url=artifact_url)
    )


app.add_typer(data_cmds.app, name="data", help="Ingest, list and inspect datasets.")
app.add_typer(model_cmds.app, name="models", help="Registered model versions and aliases.")
app.add_typer(artifact_cmds.app, name="artifacts",
              help="Artifact encryption at rest: make a key, encrypt what is stored.")
status_cmds.register(app)
audit_cmds.register(app)

# Later layers plug their commands in here; each module owns its commands.
for _module in ("train", "tune", "compress", "serving", "online", "tls", "chaos", "logs",
                "cluster"):
    try:
        __import__(f"stratum.cli.{_module}")
        sys.modules[f"stratum.cli.{_module}"].register(app)
    except ModuleNotFoundError as exc:
        if exc.name != f"stratum.cli.{_module}":
            raise


def main() -> None:
    """Entry point: a StratumError becomes one red line and exit code 1, not a traceback."""
    try:
        app()
    except StratumError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown on the error path: a native thread pool (pyarrow's
        # readers, torch's intra-op threads) still winding down then can abort the
        # process ("terminate called without an active exception") and turn exit 1 into
        # a signal. Everything we own is already closed or transactional.
        os._exit(1)


if __name__ == "__main__":
    main()
