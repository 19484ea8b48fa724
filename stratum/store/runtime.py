"""The control plane's runtime state in the metadata store: per deployment, the routing
table gateways serve and the secrets its processes were given; and the leader row.

Kept in the store, not in the leader's memory, so that whatever replaces the leader (a
restart, or a follower under PostgreSQL) adopts the running replicas and gateways instead
of starting new ones: it can still reach them (their secrets), and every gateway, however
it was started, serves the current routes (it polls ``etag``).

The rows hold secrets in plain text: the replicas' and the gateways' tokens must be
presented, so a hash would not do. Whoever can read the metadata database can already
mint an admin key there; the database is the home's 0600 file or a PostgreSQL role.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from stratum.store.metadata import MetadataStore
from stratum.store.models import ControlLeader, DeploymentRuntime, utcnow


@dataclass(frozen=True)
class Runtime:
    name: str
    generation: int
    secret: str
    gateway_token: str
    etag: str | None
    routes: dict[str, Any] | None


@dataclass(frozen=True)
class Leader:
    term: int
    url: str
    pid: int
    host: str


class RuntimeStore:
    def __init__(self, meta: MetadataStore) -> None:
        self.meta = meta

    # -- per deployment ------------------------------------------------------------------
    def runtime(self, name: str) -> Runtime | None:
        with self.meta.session() as s:
            row = s.get(DeploymentRuntime, name)
            return None if row is None else Runtime(row.name, row.generation, row.secret,
                                                    row.gateway_token, row.etag, row.routes)

    def etag(self, name: str) -> str | None:
        """The etag of ``name``'s routes: what a gateway polls (one primary-key read)."""
        with self.meta.session() as s:
            return s.scalar(select(DeploymentRuntime.etag).where(
                DeploymentRuntime.name == name))

    def save_secrets(self, name: str, generation: int, secret: str, gateway_token: str) -> None:
        with self.meta.session() as s:
            row = s.get(DeploymentRuntime, name)
            if row is None:
                row = DeploymentRuntime(name=name)
                s.add(row)
            row.generation, row.secret, row.gateway_token = generation, secret, gateway_token
            row.updated_at = utcnow()

    def save_routes(self, name: str, etag: str, routes: dict[str, Any],
                    port: int | None = None) -> None:
        with self.meta.session() as s:
            row = s.get(DeploymentRuntime, name)
            if row is None:
                row = DeploymentRuntime(name=name, generation=0, secret="", gateway_token="")
                s.add(row)
            row.etag, row.routes, row.updated_at = etag, routes, utcnow()
            if port is not None:
                row.port = port

    def etags_on_port(self, port: int) -> dict[str, str]:
        """``{deployment: etag}`` of every table served on ``port``: what a gateway there
        polls (one indexed read)."""
        with self.meta.session() as s:
            rows = s.execute(select(DeploymentRuntime.name, DeploymentRuntime.etag).where(
                DeploymentRuntime.port == port, DeploymentRuntime.etag.is_not(None)))
            return {name: etag for name, etag in rows if etag is not None}

    def drop(self, name: str) -> None:
        with self.meta.session() as s:
            s.execute(delete(DeploymentRuntime).where(DeploymentRuntime.name == name))

    # -- the leader ----------------------------------------------------------------------
    def claim_leader(self, url: str) -> Leader:
        """Record this process as the leader (call it only while holding the lease);
        returns the new term."""
        with self.meta.session() as s:
            row = s.get(ControlLeader, 1, with_for_update=True)
            if row is None:
                row = ControlLeader(id=1, term=0, url=url, pid=0, host="")
                s.add(row)
            row.term += 1
            row.url, row.pid, row.host, row.since = url, os.getpid(), socket.gethostname(), \
                utcnow()
            s.flush()
            return Leader(row.term, row.url, row.pid, row.host)

    def leader(self) -> Leader | None:
        with self.meta.session() as s:
            row = s.get(ControlLeader, 1)
            return None if row is None else Leader(row.term, row.url, row.pid, row.host)


__all__ = ["Leader", "Runtime", "RuntimeStore"]
