"""``python -m stratum.gateway --port P [--replica URL ...] [--name DEPLOYMENT]``

Static mode (``--replica``, as the benches use it) routes every model name to the given
replicas. Otherwise (``--name``) the table starts from the routes in the store of every
deployment on the gateway's port (so a restarted or a second gateway serves at once, and
one gateway serves several deployments), follows them there (``gateway.routes_poll_s``),
and the supervisor PUTs ``/admin/routes/NAME`` whenever a deployment's replica set or
traffic split changes. Settings come from
``STRATUM_SETTINGS_JSON``. ``/admin/*`` always needs a credential: the token in
``STRATUM_GATEWAY_TOKEN`` (the supervisor sets it) or, where the gateway has the metadata
store (``--name``, or ``gateway.require_auth``), an admin-scoped key.
``STRATUM_REPLICA_SECRET`` is the secret the static ``--replica`` replicas were started with
(the supervisor's routes carry one per replica instead).
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn
import uvloop

from stratum.config import load_settings
from stratum.errors import StratumError
from stratum.gateway.app import Gateway
from stratum.gateway.server import GatewayServer
from stratum.gateway.sync import routes_on_port
from stratum.gateway.traffic import RoutesSpec, static_routes
from stratum.httplimits import uvicorn_options
from stratum.monitor.logging import setup_logging
from stratum.security.access import warn_if_auth_off
from stratum.security.tls import uvicorn_ssl
from stratum.store.metadata import MetadataStore
from stratum.store.runtime import RuntimeStore


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m stratum.gateway", description=__doc__)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--replica", action="append", default=[], metavar="URL",
                   help="a replica URL; repeat for several (static routing)")
    p.add_argument("--name", default=None, help="the deployment this gateway fronts")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the port with other gateways of the deployment (SO_REUSEPORT)")
    p.add_argument("--admin-port", type=int, default=None,
                   help="also listen on 127.0.0.1:PORT, this process alone (probes, pushes)")
    p.add_argument("--uvicorn", action="store_true",
                   help="serve the ASGI app on uvicorn instead of the built-in server")
    args = p.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level, component="gateway", deployment=args.name)
    host = args.host or settings.gateway.host
    port = args.port if args.port is not None else settings.gateway.port
    settings.gateway.port = port  # what the gateway-wide rate limit is shared by
    warn_if_auth_off(logging.getLogger("stratum.gateway"), settings.gateway.require_auth,
                     f"port {port}")
    meta = None
    if settings.gateway.require_auth or (args.name and not args.replica):
        assert settings.metadata_url
        meta = MetadataStore.open(settings.metadata_url)
    try:
        routes: RoutesSpec | None = static_routes(
            args.replica, os.environ.get("STRATUM_REPLICA_SECRET"))
        parts = None
        named = not args.replica and args.name and meta is not None
        if named:
            # Before serving: a restarted (or second) gateway starts with the current tables
            # of every deployment on its port.
            assert meta is not None
            routes, parts = None, routes_on_port(RuntimeStore(meta), port, args.name)
        app = Gateway(settings, routes, meta=meta, name=args.name,
                      admin_token=os.environ.get("STRATUM_GATEWAY_TOKEN"),
                      port=port if named else None, parts=parts)
    except ValueError as exc:  # pydantic's: a malformed STRATUM_REPLICA_SECRET
        raise SystemExit(f"gateway: STRATUM_REPLICA_SECRET is not usable: {exc}") from exc
    except StratumError as exc:
        raise SystemExit(f"gateway: {exc}") from exc
    try:
        tls = uvicorn_ssl(settings.gateway.tls, where="gateway")
        if args.uvicorn and (args.reuse_port or args.admin_port is not None):
            raise SystemExit("gateway: --reuse-port and --admin-port need the built-in server "
                             "(drop --uvicorn)")
        server = None if args.uvicorn else GatewayServer(
            app, host, port, reuse_port=args.reuse_port, admin_port=args.admin_port)
    except StratumError as exc:  # unreadable certificate or key
        raise SystemExit(f"gateway: {exc}") from exc
    if server is None:
        uvicorn.run(app, host=host, port=port, loop="uvloop",
                    log_level="warning", access_log=False, server_header=False, log_config=None,
                    date_header=False, proxy_headers=False, lifespan="on", backlog=4096,
                    **uvicorn_options(settings.gateway.http), **tls)  # httptools, gateway.http
        return
    try:
        uvloop.run(server.serve())
    except OSError as exc:  # most often: the port is taken
        raise SystemExit(f"gateway: cannot listen on {host}:{port}: {exc}") from exc


if __name__ == "__main__":
    main()
