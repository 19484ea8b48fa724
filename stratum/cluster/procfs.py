"""Processes of this machine as Linux's ``/proc`` shows them: alive or not, the tree under
one, the ones whose command line names something. What stopping or killing a local node
needs, since a node's processes are not all our children (a node killed hard leaves its
orphans to init)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

PROC = Path("/proc")


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped by its parent: dead for every purpose of ours."""
    try:
        with open(PROC / str(pid) / "stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not is_zombie(pid)


def _parents() -> dict[int, int]:
    out = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue  # exited while we looked
        fields = stat.rsplit(b")", 1)[1].split()
        out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children…), parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children.get(p, [])
    return out


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (never this one)."""
    needle = text.encode()
    out = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that still exists."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


__all__ = ["alive", "descendants", "is_zombie", "kill_all", "processes_mentioning"]
