"""``python -m stratum.control [--host H] [--port P]``: the control plane (admin API and
supervisor). One instance leads (``control.lease``): on SQLite a second one for the same
home is refused; on PostgreSQL others stand by and one of them takes over when the leader
dies, adopting its replicas and gateways. The leader records itself in
``{home}/control.json`` and in the store so the CLI finds it, and on SIGTERM stops the
processes it runs (a SIGKILLed one leaves them for the next leader).
Settings come from ``STRATUM_SETTINGS_JSON``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import uvicorn

from stratum.asgi import limit_body
from stratum.config import load_settings
from stratum.control.discovery import read_record, record_path, write_record
from stratum.control.lease import FileLease, lease_for
from stratum.errors import StratumError
from stratum.httplimits import uvicorn_options
from stratum.monitor.logging import setup_logging
from stratum.security.access import warn_if_auth_off
from stratum.security.tls import uvicorn_ssl

if TYPE_CHECKING:  # the API module is imported only once the lease is decided
    from stratum.control.api import Extension


def main(argv: list[str] | None = None, *, extensions: Sequence[Extension] = (),
         prog: str = "python -m stratum.control") -> int:
    """``extensions``: what the interface layer adds to this process (the dashboard of
    ``python -m stratum.web``); see ``control.api.ControlParts``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level, component="control")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe otherwise
    warn_if_auth_off(logging.getLogger("stratum.control"), settings.gateway.require_auth,
                     "the gateway port of a deployment")
    host = args.host or settings.control.host
    port = args.port if args.port is not None else settings.control.port
    lease = lease_for(settings)
    if not lease.try_acquire() and not lease.standby:
        other = read_record(settings)
        where = f" at {other['url']}" if other else ""
        holder = lease.holder() if isinstance(lease, FileLease) else "?"
        print(f"error: a control plane already runs for {settings.home} (pid {holder}{where}; "
              f"it holds {lease.what}); `stratum stop` stops it", file=sys.stderr)
        return 2
    from stratum.control.api import create_app

    url = f"{settings.control.tls.scheme}://{host}:{port}"
    try:
        tls = uvicorn_ssl(settings.control.tls, where="control")
        app = create_app(settings, on_ready=lambda: write_record(settings, host, port),
                         lease=lease, url=url, extensions=extensions)
    except StratumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        uvicorn.run(limit_body(app, settings.control.max_body_bytes), host=host, port=port,
                    log_level="warning", access_log=False, log_config=None,
                    **uvicorn_options(settings.control.http), **tls)
    finally:
        rec = read_record(settings, check_alive=False)
        if rec is not None and rec.get("pid") == os.getpid():
            record_path(settings).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
