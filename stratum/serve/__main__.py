"""``python -m stratum.serve --model NAME@REF --port PORT [--host H] [--name DEPLOYMENT]``

Loads the version first (a model that cannot load exits non-zero with the reason on
stderr, before the port opens), then serves it on uvicorn with uvloop and httptools and
no access log. Settings come from STRATUM_SETTINGS_JSON (``load_settings()``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import TYPE_CHECKING

from stratum.config import Settings, load_settings
from stratum.errors import StratumError
from stratum.security.names import validate_name
from stratum.store import Store, parse_ref

if TYPE_CHECKING:
    from stratum.serve.app import Replica


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stratum.serve", description=__doc__)
    ap.add_argument("--model", required=True, help="NAME@VERSION or NAME@ALIAS")
    ap.add_argument("--port", type=int, default=None, help="default: settings.serve.port")
    ap.add_argument("--host", default=None, help="default: settings.serve.host")
    ap.add_argument("--name", default=None, help="deployment name (an alias in URL paths)")
    args = ap.parse_args(argv)

    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s replica %(name)s: %(message)s")
    try:
        name, ref = parse_ref(args.model)
        validate_name(name, "model name")
        if args.name:
            validate_name(args.name, "deployment name")
        replica = _build(settings, name, ref, args.name)
    except StratumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    # Start-up made long-lived objects (modules, weights, metadata); freezing them keeps
    # every later full GC from walking them while requests wait.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(settings.serve.switch_interval_ms / 1000)  # see ServeSettings
    uvicorn.run(
        replica, host=args.host or settings.serve.host,
        port=settings.serve.port if args.port is None else args.port,
        loop="uvloop", http="httptools", lifespan="on", access_log=False,
        # No proxy-header middleware: the gateway passes what matters as x-request-id.
        proxy_headers=False, server_header=False, log_level="warning",
        timeout_graceful_shutdown=int(settings.serve.drain_timeout_s),
    )
    return 0


def _build(settings: Settings, name: str, ref: str | None, deployment: str | None) -> Replica:
    from stratum.serve.app import Replica

    store = Store.open(settings)
    replica = Replica(settings, store, name, deployment)
    replica.load(ref)
    return replica


if __name__ == "__main__":
    sys.exit(main())
