"""What every CLI command gets: the settings, and the stores opened lazily."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import typer
from rich.console import Console

from stratum.config import Settings
from stratum.control.client import ControlClient
from stratum.store import Store

console = Console()
err_console = Console(stderr=True)


@dataclass
class CliContext:
    settings: Settings
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.settings)
        return self._store


def get_ctx(ctx: typer.Context) -> CliContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliContext), "the root callback sets the CLI context"
    return obj


# The control plane the CLI starts when none runs: the admin API with the dashboard
# mounted. ``stratum.web`` composes that process; a bare ``python -m stratum.control`` has
# no dashboard.
CONTROL_ENTRY = "stratum.web"


def control_client(settings: Settings, api_key: str | None = None) -> ControlClient:
    """The client every command uses; it starts ``CONTROL_ENTRY`` when none runs."""
    return ControlClient(settings, api_key, entry=CONTROL_ENTRY)


def print_json(data: Any) -> None:
    """Machine-readable output for scripts (``--json``): one JSON document on stdout."""
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
