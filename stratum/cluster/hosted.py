"""One process of ours on a cluster node, hosted by a Ray actor.

The actor holds the node's resources (the CPUs and GPUs it was created with) and runs the
process as its child: ``python -P -m MODULE ARGS --host NODE_IP --port PORT``, the same
command line a local start uses, bound to the node's own address on a port free there.
The process is started with ``PR_SET_PDEATHSIG``, from a thread that lives as long as it
does, so it dies with the actor (an actor killed, a node lost): nothing is left serving
behind Ray's back. ``wait`` returns when the process exits; its caller learns of an
actor's or a node's death by the same call failing (``RayActorError``).

The actor class is made here with ``ray.remote`` only when first used, so importing this
module does not import Ray.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from stratum.config.child import start_python

_PR_SET_PDEATHSIG = 1
# What Ray puts in its workers' environment for their own sake; the hosted process starts
# as it would on a machine of its own (its threads come from its settings, not from
# OMP_NUM_THREADS=1). CUDA_VISIBLE_DEVICES stays: it names the GPUs the actor was given.
RAY_WORKER_ENV = ("RAY_", "OMP_NUM_THREADS", "PYTHONBREAKPOINT", "SPT_NOENV")
_libc: Any = None


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ProcessHost:
    """The actor's body (see the module docstring); ``actor_class`` wraps it for Ray."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.exited = threading.Event()
        self.returncode: int | None = None

    def start(self, module: str, args: list[str], env: dict[str, str],
              log: str) -> dict[str, Any]:
        """Start the process on this node; ``{"ip", "port", "pid", "node_id"}``."""
        global _libc
        import ray

        ctx = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:  # the process binds it a moment later
            s.bind((ip, 0))
            port = int(s.getsockname()[1])
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        _libc = _libc or ctypes.CDLL(None, use_errno=True)
        started = threading.Event()

        def run() -> None:
            assert self.log is not None
            try:
                with open(self.log, "ab") as out:
                    self.popen = start_python(
                        module, [*args, "--host", ip, "--port", str(port)], env=env,
                        drop=RAY_WORKER_ENV, stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            finally:
                started.set()
            self.returncode = self.popen.wait()
            self.exited.set()

        # The thread that forks is the "parent" PR_SET_PDEATHSIG watches: it must live
        # as long as the process, which this one does (it waits for it).
        threading.Thread(target=run, name="hosted-process", daemon=True).start()
        started.wait()
        if self.popen is None:
            raise RuntimeError(f"could not start {module} on {ip}")
        return {"ip": ip, "port": port, "pid": self.popen.pid,
                "node_id": ctx.get_node_id()}

    def wait(self) -> dict[str, Any]:
        """Block until the process exits: ``{"code": its exit code (negative: the
        signal), "log": the end of its output}`` (why it exited, for its supervisor)."""
        self.exited.wait()
        return {"code": self.returncode, "log": self.log_tail()}

    def signal(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def log_tail(self, chars: int = 1500) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_bytes()[-chars:].decode("utf-8", "replace").strip()


_ACTOR: Any = None


def actor_class() -> Any:
    """``ProcessHost`` as a Ray actor class. Threaded (``max_concurrency``): ``wait``
    blocks in one thread while ``signal`` and ``log_tail`` are answered in others."""
    global _ACTOR
    if _ACTOR is None:
        import ray

        remote: Any = ray.remote  # its overloads do not know the actor options
        _ACTOR = remote(max_concurrency=4)(ProcessHost)
    return _ACTOR


__all__ = ["ProcessHost", "actor_class"]
