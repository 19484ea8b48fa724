"""The learner's ``/metrics`` page: a small HTTP server on a thread of its own, beside the
learning loop, bounded as every Stratum server is (``stratum.httplimits``: at most 16
connections, header and idle timeouts) and answering nothing but ``GET /metrics`` and
``GET /health``.

>>> server = MetricsServer(new_registry(), "127.0.0.1", 0)
>>> server.url.startswith("http://127.0.0.1:")
True
>>> server.stop()
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from stratum.config.servers import HttpLimits
from stratum.httplimits import uvicorn_options
from stratum.monitor.metrics import new_registry, render

__all__ = ["MetricsServer", "new_registry"]

LIMITS = HttpLimits(max_connections=16, header_timeout_s=5.0, keep_alive_s=30.0)


class MetricsServer:
    """Serve ``registry`` on ``host:port`` (0: a free port; ``url`` says which) until
    ``stop``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self._app, interface="asgi3", lifespan="off", access_log=False,
                                log_config=None, proxy_headers=False,
                                log_level="warning", server_header=False,
                                **uvicorn_options(LIMITS))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="metrics", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and \
                time.monotonic() < deadline:
            time.sleep(0.01)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            body, ctype = await asyncio.to_thread(render, self.registry)
            status, headers = 200, [(b"content-type", ctype.encode())]
        elif scope["method"] == "GET" and scope["path"] == "/health":
            status, headers, body = 200, [(b"content-type", b"application/json")], b'{"ok":true}'
        else:
            status, headers, body = 404, [(b"content-type", b"text/plain")], b"not found\n"
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
