"""What every CLI command gets: the settings, and the stores opened lazily."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import typer
from rich.console import Console

from stratum.config import Settings
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


def print_json(data: Any) -> None:
    """Machine-readable output for scripts (``--json``): one JSON document on stdout."""
    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
