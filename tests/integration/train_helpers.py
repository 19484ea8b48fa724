"""Shared set-up for the training tests: a Stratum home with real built-in datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stratum.config import Settings, load_settings
from stratum.data import ingest
from stratum.store import Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def home_with(tmp: Path, *datasets: str) -> Settings:
    settings = load_settings(home=tmp / "home")
    store = Store.open(settings)
    try:
        for name in datasets:
            ingest(f"builtin:{name}", name, store)
    finally:
        store.close()
    return settings


def example(file: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{file}.yaml").read_text())
    doc.update(changes)
    return doc
