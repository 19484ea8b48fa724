"""``python -m stratum.control [--host H] [--port P]``: the control plane (admin API and
supervisor). It records itself in ``{home}/control.json`` so the CLI finds it, refuses to
start beside a live one (a single instance; leader election among several through
PostgreSQL advisory locks is not implemented), and on SIGTERM stops the processes it runs.
Settings come from ``STRATUM_SETTINGS_JSON``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from stratum.asgi import limit_body
from stratum.config import load_settings
from stratum.control.discovery import read_record, record_path, write_record
from stratum.errors import StratumError
from stratum.httplimits import uvicorn_options
from stratum.security.access import warn_if_auth_off


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stratum.control", description=__doc__)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s control %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per probe otherwise
    warn_if_auth_off(logging.getLogger("stratum.control"), settings.gateway.require_auth,
                     "the gateway port of a deployment")
    host = args.host or settings.control.host
    port = args.port if args.port is not None else settings.control.port
    other = read_record(settings)
    if other is not None and other.get("pid") != os.getpid():
        print(f"error: a control plane already runs (pid {other['pid']}, {other['url']})",
              file=sys.stderr)
        return 2
    from stratum.control.api import create_app

    try:
        app = create_app(settings, on_ready=lambda: write_record(settings, host, port))
    except StratumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        uvicorn.run(limit_body(app, settings.control.max_body_bytes), host=host, port=port,
                    log_level="warning", access_log=False,
                    **uvicorn_options(settings.control.http))
    finally:
        rec = read_record(settings, check_alive=False)
        if rec is not None and rec.get("pid") == os.getpid():
            record_path(settings).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
