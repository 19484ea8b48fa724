"""The home folder is private: 0700, and every file our processes write in it 0600.

One mechanism, in one place: the process umask becomes 0o077 when a process first opens
the home (``Store.open``, and the CLI before it writes a log). A umask rather than a chmod
per file because most files there are not created by our code: SQLite makes the database
and its ``-wal``/``-shm`` files, the queue its own, fsspec the artifacts and the cache,
and the logs are opened by whoever spawns a process. With the umask each of them is
private from the first byte, with no window in which another user could open it.

The umask is process-wide: a program that embeds Stratum gets private files too, which is
what a process holding keys and logged inputs should have anyway.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077

log = logging.getLogger(__name__)


def private_home(home: Path) -> Path:
    """Set the umask to 0o077 and make ``home`` (created if missing) mode 0700; returns
    its resolved path. A home made by an older version with group or world access is
    tightened (its older files then become unreachable to others with it)."""
    os.umask(PRIVATE_UMASK)
    path = Path(home).expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        try:
            path.chmod(0o700)
        except PermissionError:  # not ours: say so, files made from now on are private
            log.warning("the Stratum home %s has mode %o and is not ours to tighten",
                        path, mode)
            return path
        log.warning("tightened the Stratum home %s from %o to 700 (its files held keys and "
                    "logged inputs readable by other users)", path, mode)
    return path


__all__ = ["PRIVATE_UMASK", "private_home"]
