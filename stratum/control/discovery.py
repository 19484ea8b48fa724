"""Where the running control plane is: ``{home}/control.json`` with its pid and URL."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from stratum.config import Settings
from stratum.control.procs import Proc


def record_path(settings: Settings) -> Path:
    return settings.home.expanduser().resolve() / "control.json"


def write_record(settings: Settings, host: str, port: int) -> None:
    path = record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port,
                               "url": f"{settings.control.tls.scheme}://{host}:{port}",
                               "started": time.time()}))
    tmp.replace(path)  # atomic: a reader never sees half a record


def read_record(settings: Settings, check_alive: bool = True) -> dict[str, Any] | None:
    """The record, or None when there is none or (``check_alive``) its process is gone."""
    try:
        rec: dict[str, Any] = json.loads(record_path(settings).read_text())
    except (OSError, ValueError):
        return None
    if check_alive:
        try:
            pid = int(rec["pid"])
        except (KeyError, ValueError):
            return None
        if not Proc(pid).alive():  # a zombie (dead, not yet reaped) counts as gone
            return None
    return rec
