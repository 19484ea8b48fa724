"""How a Stratum process starts another one: ``python -P -m MODULE`` in ``/``.

Every process we spawn (replicas, gateways, the control plane, the learner, training
workers) starts here, so none of them imports from the operator's folder. ``python -m``
would put the working directory first on ``sys.path``, and a stray ``triton.py`` or
``numpy.py`` in the folder someone typed ``stratum up`` in would be imported by every
replica. ``-P`` (Python's safe-path mode, 3.11+) leaves it off, and the child's working
directory is ``/`` rather than the operator's: it exists on every machine, an ordinary
user cannot write to it (so nothing can be planted there, and a stray relative write fails
loudly instead of landing in someone's project), and it keeps no folder of the operator's
busy. Settings reach the child with an absolute home (``Settings.child_env``).

``PYTHONPATH`` still counts, as it does for any Python: it is how a user's own
``module:function`` model reaches the training workers. Its relative entries are made
absolute against the parent's working directory, so they keep the meaning they had where
the command was typed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

CHILD_CWD = "/"


def python_command(module: str, args: Sequence[str] = ()) -> list[str]:
    """The command line of a Stratum child process.

    >>> python_command("stratum.serve", ["--port", "8100"])[1:]
    ['-P', '-m', 'stratum.serve', '--port', '8100']
    """
    return [sys.executable, "-P", "-m", module, *args]


def child_environ(extra: Mapping[str, str], drop: tuple[str, ...] = ()) -> dict[str, str]:
    """Our environment without the variables named ``drop*`` (prefixes), with ``extra`` on
    top and ``PYTHONPATH`` made absolute."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}
    if env.get("PYTHONPATH"):
        # An empty entry means "the working directory" to Python: left as is it now means
        # CHILD_CWD, never the operator's folder.
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) if p else p for p in env["PYTHONPATH"].split(os.pathsep))
    return env


def start_python(module: str, args: Sequence[str] = (), *, env: Mapping[str, str],
                 drop: tuple[str, ...] = (), **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` of ``python -P -m module args`` in ``/`` with our environment
    (less the variables whose names start with one of ``drop``) plus ``env``; ``popen``
    takes Popen's other keywords (stdout, process_group…)."""
    return subprocess.Popen(python_command(module, args), cwd=CHILD_CWD,
                            env=child_environ(env, drop), **popen)
