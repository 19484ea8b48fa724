"""``python -m stratum.serve --model NAME@REF --port PORT [--host H] [--name DEPLOYMENT]``

Loads the version first (a model that cannot load exits non-zero with the reason on
stderr, before the port opens), then serves it on uvicorn with uvloop and httptools and
no access log. Settings come from STRATUM_SETTINGS_JSON (``load_settings()``).

Every route but the health probes needs the deployment secret, given in the environment
as ``STRATUM_REPLICA_SECRET`` (how the supervisor gives it) or in ``--secret-file``. A
replica with neither refuses to start; ``--insecure`` serves everyone, and says so loudly.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stratum.config import Settings, load_settings
from stratum.errors import ConfigError, StratumError
from stratum.httplimits import uvicorn_options
from stratum.monitor.logging import setup_logging
from stratum.security.access import warn_if_auth_off
from stratum.security.names import validate_name
from stratum.security.tls import uvicorn_ssl
from stratum.security.tokens import REPLICA_SECRET_ENV, check_replica_secret
from stratum.store import Store, parse_ref

if TYPE_CHECKING:
    from stratum.serve.app import Replica

log = logging.getLogger("stratum.serve")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stratum.serve", description=__doc__)
    ap.add_argument("--model", required=True, help="NAME@VERSION or NAME@ALIAS")
    ap.add_argument("--port", type=int, default=None, help="default: settings.serve.port")
    ap.add_argument("--host", default=None, help="default: settings.serve.host")
    ap.add_argument("--name", default=None, help="deployment name (an alias in URL paths)")
    ap.add_argument("--replica-id", default=None,
                    help="this replica's id in its deployment (the supervisor's), for logs "
                         "and traces")
    ap.add_argument("--secret-file", type=Path, default=None,
                    help=f"file holding the deployment secret (else ${REPLICA_SECRET_ENV})")
    ap.add_argument("--insecure", action="store_true",
                    help="serve without a secret: anyone who reaches the port may predict, "
                         "post feedback, swap and drain")
    args = ap.parse_args(argv)

    settings = load_settings()
    model = args.model.partition("@")[0]
    setup_logging(settings.log_level, component="replica", deployment=args.name or model,
                  model=model, replica=args.replica_id)
    port = settings.serve.port if args.port is None else args.port
    try:
        secret = _secret(args.secret_file, args.insecure, port)
        name, ref = parse_ref(args.model)
        validate_name(name, "model name")
        if args.name:
            validate_name(args.name, "deployment name")
        tls = uvicorn_ssl(settings.serve.tls, where="serve")
        replica = _build(settings, name, ref, args.name, secret, args.replica_id)
    except StratumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    warn_if_auth_off(log, settings.gateway.require_auth, "the gateway in front of it")

    import uvicorn

    # Start-up made long-lived objects (modules, weights, metadata); freezing them keeps
    # every later full GC from walking them while requests wait.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(settings.serve.switch_interval_ms / 1000)  # see ServeSettings
    uvicorn.run(
        replica, host=args.host or settings.serve.host, port=port,
        loop="uvloop", lifespan="on", access_log=False,
        # No proxy-header middleware: the gateway passes what matters as x-request-id.
        proxy_headers=False, server_header=False, log_level="warning",
        log_config=None,  # uvicorn's loggers reach the root logger's JSON handler
        timeout_graceful_shutdown=int(settings.serve.drain_timeout_s),
        **uvicorn_options(settings.serve.http),  # httptools, with serve.http's limits
        **tls,  # serve.tls: HTTPS, mutual when it names a client CA
    )
    return 0


def _secret(secret_file: Path | None, insecure: bool, port: int) -> str | None:
    """The deployment secret from ``--secret-file`` or the environment; None only when
    ``--insecure`` asked for it."""
    secret = os.environ.pop(REPLICA_SECRET_ENV, "").strip()  # nothing we start needs it
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --secret-file {secret_file}: {exc}") from exc
    if secret:
        return check_replica_secret(secret)
    if not insecure:
        raise ConfigError(
            "no replica secret: a replica answers only requests that carry its "
            "deployment's secret",
            hint=f"set {REPLICA_SECRET_ENV} or pass --secret-file PATH (a static gateway "
                 f"sends it given the same {REPLICA_SECRET_ENV}), or pass --insecure to "
                 "serve everyone who can reach the port")
    log.warning("INSECURE: no replica secret (--insecure); anyone who can reach port %d can "
                "predict, post feedback, hot-swap and drain this replica", port)
    return None


def _build(settings: Settings, name: str, ref: str | None, deployment: str | None,
           secret: str | None, replica_id: str | None) -> Replica:
    from stratum.serve.app import Replica

    store = Store.open(settings)
    replica = Replica(settings, store, name, deployment, secret=secret, replica_id=replica_id)
    replica.load(ref)
    return replica


if __name__ == "__main__":
    sys.exit(main())
