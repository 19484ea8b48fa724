"""Local processes the supervisor runs (replicas, gateways): start, check, stop.

A ``Proc`` is our child (a Popen), or a bare pid — the seam for adopting the processes of
a previous control plane, which the supervisor does not do yet (issue 13); both answer
``alive()`` the same way.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from stratum.cluster.procfs import is_zombie
from stratum.config.child import start_python


class Process(Protocol):
    """What the supervisor needs of a process it started; ``Proc`` is the local one."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def alive(self) -> bool: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def log_tail(self, chars: int = 1500) -> str: ...


# ``spawn``'s signature: how the supervisor starts a replica or a gateway.
Spawn = Callable[[str, list[str], dict[str, str], Path], Process]


@dataclass(eq=False)
class Proc:
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not is_zombie(self.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def log_tail(self, chars: int = 1500) -> str:
        if self.log is None or not self.log.exists():
            return ""
        data = self.log.read_bytes()[-chars:].decode("utf-8", "replace")
        return data.strip()


def spawn(module: str, args: list[str], env: dict[str, str], log: Path) -> Proc:
    """Start ``python -P -m module args`` with ``env`` on top of ours, output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = start_python(module, args, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    return Proc(popen.pid, popen, log)


def watch_exit(pid: int, wake: Callable[[], None]) -> None:
    """Call ``wake`` on the running loop the moment ``pid`` exits (a pidfd turns readable),
    so a crash is handled now rather than at the next reconcile tick. Without pidfds
    (not Linux 5.3+, or not ours to watch) the tick still notices."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return
    loop = asyncio.get_running_loop()

    def fired() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        wake()

    loop.add_reader(fd, fired)


async def stop(procs: Sequence[Process], grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to exit, then SIGKILL for what has not."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for p in procs:
        if p.alive():
            p.kill()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
