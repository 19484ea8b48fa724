"""``stratum artifacts``: encryption at rest — make a key, encrypt what is stored."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stratum.cli.context import console, err_console, get_ctx, print_json
from stratum.errors import ConfigError, IntegrityError, StratumError
from stratum.security.artifact_keys import write_key_file

app = typer.Typer(no_args_is_help=True)


@app.command("keygen")
def keygen_cmd(
    path: Path = typer.Argument(..., help="File to write the new key to (must not exist)."),
) -> None:
    """Make a new artifact encryption key in a 0600 file and print its id."""
    path = path.expanduser().resolve()
    key_id = write_key_file(path)
    console.print(f"[green]artifact key {key_id}[/] written to {escape(str(path))} (mode 600)")
    console.print(
        "To encrypt artifacts with it, list it FIRST in artifact_key_files, keeping any "
        "older keys after it so what they sealed stays readable:\n"
        f"  export STRATUM_ARTIFACT_KEY_FILES={path}\n"
        f"  # or in the YAML settings: artifact_key_files: [{path}]\n"
        "Then `stratum artifacts encrypt` rewrites what is already stored. Back the key up: "
        "without it, what it sealed cannot be read.", markup=False, highlight=False)


@app.command("encrypt")
def encrypt_cmd(
    ctx: typer.Context,
    prefix: str = typer.Option("", "--prefix", help="Only artifacts under this path."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Encrypt stored artifacts under the first configured key (plaintext or older key).

    Each rewrite is atomic and read back; the checksums stay the same.
    """
    cli = get_ctx(ctx)
    artifacts = cli.store.artifacts
    keys = artifacts.keys
    if keys is None:
        raise ConfigError("no artifact key is configured to encrypt with",
                          hint="make one with `stratum artifacts keygen PATH` and set "
                               "STRATUM_ARTIFACT_KEY_FILES (or artifact_key_files)")
    paths = artifacts.list(prefix)
    rewritten, unchanged, failed = 0, 0, []
    with Progress(TextColumn("[bold]encrypt[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err_console, transient=True,
                  disable=as_json or not err_console.is_terminal) as bar:
        task = bar.add_task("", total=len(paths))
        for path in paths:
            bar.update(task, description=path)
            try:
                if artifacts.reseal(path):
                    artifacts.verify(path)  # read back: decrypts and matches the sidecar
                    rewritten += 1
                else:
                    unchanged += 1
            except (IntegrityError, ConfigError) as exc:
                failed.append({"path": path, "error": str(exc)})
            bar.advance(task)
    doc = {"key_id": keys.primary.key_id, "artifacts": len(paths), "rewritten": rewritten,
           "already_encrypted": unchanged, "failed": failed}
    if as_json:
        print_json(doc)
    else:
        console.print(f"{rewritten} of {len(paths)} artifacts rewritten under key "
                      f"{keys.primary.key_id} and read back; {unchanged} already were")
        for f in failed:
            err_console.print(f"[red]failed:[/] {f['error']}", highlight=False)
    if failed:
        raise StratumError(f"{len(failed)} artifact(s) could not be encrypted; they are "
                           "left as they were")
