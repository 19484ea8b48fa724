"""The metadata store: datasets, runs and metrics, model versions, aliases, deployments,
API keys and events, over one SQLAlchemy engine (SQLite file or PostgreSQL).

Every write is one transaction; objects come back detached and fully loaded, so callers
may keep them after the session closes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from stratum.errors import ConflictError, NotFoundError
from stratum.security.names import validate_name
from stratum.store import models as m
from stratum.store.db import make_engine, migrate, session_factory
from stratum.store.models import utcnow


class MetadataStore:
    """Typed access to the metadata tables. ``MetadataStore.open(url)`` migrates on start."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = session_factory(engine, "the metadata store")

    @classmethod
    def open(cls, url: str) -> MetadataStore:
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error; a database
        that does not answer raises ``StoreUnavailableError`` (503)."""
        with self._sessions() as s, s.begin():
            yield s

    # -- events -----------------------------------------------------------------------
    def add_event(
        self, kind: str, subject: str, payload: dict[str, Any] | None = None,
        session: Session | None = None,
    ) -> None:
        ev = m.Event(kind=kind, subject=subject, payload=payload or {})
        if session is not None:
            session.add(ev)
            return
        with self.session() as s:
            s.add(ev)

    def events(
        self, subject: str | None = None, kind: str | None = None, limit: int = 100,
        after_id: int = 0,
    ) -> list[m.Event]:
        q = select(m.Event).where(m.Event.id > after_id)
        if subject is not None:
            q = q.where(m.Event.subject == subject)
        if kind is not None:
            q = q.where(m.Event.kind.like(kind.replace("*", "%")))
        with self.session() as s:
            return list(s.scalars(q.order_by(m.Event.id.desc()).limit(limit)))

    # -- datasets ---------------------------------------------------------------------
    def add_dataset_version(
        self, name: str, version: str, *, source: str, num_rows: int,
        schema: dict[str, Any], stats: dict[str, Any], cleaning: dict[str, Any],
        shard_map: dict[str, Any], extra: dict[str, Any] | None = None,
    ) -> tuple[m.DatasetVersion, bool]:
        """Record a version; returns ``(version, created)``. Same content → same version."""
        validate_name(name, "dataset name")
        with self.session() as s:
            ds = s.scalar(select(m.Dataset).where(m.Dataset.name == name))
            if ds is None:
                ds = m.Dataset(name=name)
                s.add(ds)
                s.flush()
            existing = s.scalar(
                select(m.DatasetVersion).where(
                    m.DatasetVersion.dataset_id == ds.id, m.DatasetVersion.version == version
                )
            )
            if existing is not None:
                return existing, False
            dv = m.DatasetVersion(
                dataset_id=ds.id, version=version, source=source, num_rows=num_rows,
                schema=schema, stats=stats, cleaning=cleaning, shard_map=shard_map,
                extra=extra or {},
            )
            s.add(dv)
            s.flush()
            self.add_event("dataset.version", name, {"version": version, "rows": num_rows}, s)
            return dv, True

    def datasets(self) -> list[tuple[m.Dataset, m.DatasetVersion | None, int]]:
        """Every dataset with its newest version and its version count."""
        with self.session() as s:
            out = []
            for ds in s.scalars(select(m.Dataset).order_by(m.Dataset.name)):
                versions = list(
                    s.scalars(
                        select(m.DatasetVersion)
                        .where(m.DatasetVersion.dataset_id == ds.id)
                        .order_by(m.DatasetVersion.id.desc())
                    )
                )
                out.append((ds, versions[0] if versions else None, len(versions)))
            return out

    def dataset_version(self, name: str, version: str | None = None) -> m.DatasetVersion:
        """``version`` None or ``latest`` → newest; else the full hash or a unique prefix."""
        with self.session() as s:
            ds = s.scalar(select(m.Dataset).where(m.Dataset.name == name))
            if ds is None:
                raise NotFoundError(
                    f"dataset {name!r} does not exist", hint="see `stratum data list`"
                )
            q = select(m.DatasetVersion).where(m.DatasetVersion.dataset_id == ds.id)
            if version in (None, "latest"):
                dv = s.scalar(q.order_by(m.DatasetVersion.id.desc()).limit(1))
            else:
                hits = list(s.scalars(q.where(m.DatasetVersion.version.startswith(version))))
                dv = hits[0] if len(hits) == 1 else None
            if dv is None:
                raise NotFoundError(f"dataset {name}@{version} does not exist")
            return dv

    def dataset_versions(self, name: str) -> list[m.DatasetVersion]:
        with self.session() as s:
            q = (
                select(m.DatasetVersion)
                .join(m.Dataset)
                .where(m.Dataset.name == name)
                .order_by(m.DatasetVersion.id.desc())
            )
            return list(s.scalars(q))

    # -- runs and metrics ---------------------------------------------------------------
    def start_run(
        self, name: str, *, strategy: str, config: dict[str, Any],
        dataset_version_id: int | None = None, run_id: str | None = None,
    ) -> m.Run:
        with self.session() as s:
            existing = s.get(m.Run, run_id) if run_id else None
            if existing is not None:  # a resumed run keeps its id and history
                existing.status = "running"
                existing.finished_at = None
                existing.error = None
                return existing
            run = m.Run(
                id=run_id or str(uuid.uuid4()), name=name, strategy=strategy, config=config,
                dataset_version_id=dataset_version_id,
            )
            s.add(run)
            return run

    def finish_run(
        self, run_id: str, status: str, *, error: str | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        with self.session() as s:
            run = s.get(m.Run, run_id)
            if run is None:
                raise NotFoundError(f"run {run_id} does not exist")
            run.status, run.error, run.finished_at = status, error, utcnow()
            if summary:
                run.summary = {**(run.summary or {}), **summary}

    def run(self, run_id: str) -> m.Run:
        with self.session() as s:
            run = s.get(m.Run, run_id)
            if run is None:
                raise NotFoundError(f"run {run_id} does not exist")
            return run

    def runs(self, name: str | None = None, limit: int = 50, *,
             exclude_strategies: Sequence[str] = ()) -> list[m.Run]:
        q = select(m.Run)
        if name:
            q = q.where(m.Run.name == name)
        if exclude_strategies:
            q = q.where(m.Run.strategy.not_in(exclude_strategies))
        with self.session() as s:
            return list(s.scalars(q.order_by(m.Run.started_at.desc()).limit(limit)))

    def log_metrics(
        self, run_id: str, values: dict[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        """Record ``values`` at ``step``. A NaN or infinite value is a metric that could
        not be computed (e.g. accuracy over no rows); it is left out, not stored as NULL."""
        with self.session() as s:
            s.add_all(
                m.Metric(run_id=run_id, key=k, step=step, epoch=epoch, value=float(v))
                for k, v in values.items() if math.isfinite(float(v))
            )

    def metrics(self, run_id: str, key: str | None = None) -> list[m.Metric]:
        q = select(m.Metric).where(m.Metric.run_id == run_id)
        if key:
            q = q.where(m.Metric.key == key)
        with self.session() as s:
            return list(s.scalars(q.order_by(m.Metric.step, m.Metric.id)))

    # -- model registry -----------------------------------------------------------------
    def next_model_version(self, name: str) -> int:
        with self.session() as s:
            top = s.scalar(
                select(func.max(m.ModelVersion.version)).where(m.ModelVersion.name == name)
            )
            return int(top or 0) + 1

    def add_model_version(
        self, name: str, *, version: int, artifact_path: str, spec: dict[str, Any],
        metrics: dict[str, Any] | None = None, run_id: str | None = None,
        parent_id: int | None = None, dataset_version_id: int | None = None,
        aliases: Sequence[str] = (),
    ) -> m.ModelVersion:
        """Register a version (artifacts must already be written) and set ``aliases``."""
        validate_name(name, "model name")
        try:
            with self.session() as s:
                mv = m.ModelVersion(
                    name=name, version=version, artifact_path=artifact_path, spec=spec,
                    metrics=metrics or {}, run_id=run_id, parent_id=parent_id,
                    dataset_version_id=dataset_version_id,
                )
                s.add(mv)
                s.flush()
                self.add_event("model.registered", name, {"version": version}, s)
                for alias in aliases:
                    self._set_alias(s, mv, alias)
                return mv
        except sa_exc.IntegrityError as exc:
            raise ConflictError(f"model {name} version {version} already exists") from exc

    def model_versions(self, name: str | None = None) -> list[m.ModelVersion]:
        q = select(m.ModelVersion)
        if name:
            q = q.where(m.ModelVersion.name == name)
        with self.session() as s:
            return list(s.scalars(q.order_by(m.ModelVersion.name, m.ModelVersion.version)))

    def model_version(self, name: str, ref: str | int | None = None) -> m.ModelVersion:
        """Resolve ``ref``: a version number, an alias, ``latest`` or None (latest)."""
        with self.session() as s:
            q = select(m.ModelVersion).where(m.ModelVersion.name == name)
            mv: m.ModelVersion | None
            if ref in (None, "latest"):
                mv = s.scalar(q.order_by(m.ModelVersion.version.desc()).limit(1))
            elif isinstance(ref, int) or str(ref).lstrip("v").isdigit():
                number = int(str(ref).lstrip("v"))
                mv = s.scalar(q.where(m.ModelVersion.version == number))
            else:
                al = s.get(m.Alias, (name, str(ref)))
                mv = s.get(m.ModelVersion, al.model_version_id) if al else None
            if mv is None:
                raise NotFoundError(
                    f"model {name}@{ref if ref is not None else 'latest'} does not exist",
                    hint="see `stratum models list`",
                )
            return mv

    def model_version_by_id(self, version_id: int) -> m.ModelVersion:
        with self.session() as s:
            mv = s.get(m.ModelVersion, version_id)
            if mv is None:
                raise NotFoundError(f"model version id {version_id} does not exist")
            return mv

    def set_alias(self, name: str, alias: str, version: int, *, reason: str = "") -> None:
        """Point ``alias`` at ``name`` version ``version`` atomically; records an event."""
        validate_name(alias, "alias")
        with self.session() as s:
            mv = s.scalar(
                select(m.ModelVersion).where(
                    m.ModelVersion.name == name, m.ModelVersion.version == version
                )
            )
            if mv is None:
                raise NotFoundError(f"model {name}@{version} does not exist")
            self._set_alias(s, mv, alias, reason)

    def _set_alias(self, s: Session, mv: m.ModelVersion, alias: str, reason: str = "") -> None:
        al = s.get(m.Alias, (mv.name, alias), with_for_update=True)
        previous = None
        if al is None:
            s.add(m.Alias(name=mv.name, alias=alias, model_version_id=mv.id))
        else:
            prev_mv = s.get(m.ModelVersion, al.model_version_id)
            previous = prev_mv.version if prev_mv else None
            al.model_version_id, al.updated_at = mv.id, utcnow()
        self.add_event(
            "alias.moved", mv.name,
            {"alias": alias, "version": mv.version, "previous": previous, "reason": reason}, s,
        )

    def aliases(self, name: str) -> dict[str, int]:
        """``{alias: version}`` for one model."""
        with self.session() as s:
            rows = s.execute(
                select(m.Alias.alias, m.ModelVersion.version)
                .join(m.ModelVersion, m.Alias.model_version_id == m.ModelVersion.id)
                .where(m.Alias.name == name)
            )
            return {a: v for a, v in rows}

    # -- deployments ----------------------------------------------------------------------
    def put_deployment(self, name: str, spec: dict[str, Any], *,
                       if_generation: int | None = None) -> m.Deployment:
        """Create or replace the wanted state of a deployment; bumps its generation.
        ``if_generation``: only while the stored generation is that one (else a
        ConflictError), so a writer that decided on an older spec (the autoscaler) never
        overwrites a newer one (a deploy)."""
        validate_name(name, "deployment name")
        with self.session() as s:
            query = select(m.Deployment).where(m.Deployment.name == name)
            dep = s.scalar(query if if_generation is None else query.with_for_update())
            if if_generation is not None and (dep is None or dep.generation != if_generation):
                raise ConflictError(f"deployment {name!r} changed since generation "
                                    f"{if_generation}", hint="decide again on the new one")
            if dep is None:
                dep = m.Deployment(name=name, spec=spec, observed={}, status="pending")
                s.add(dep)
            else:
                dep.spec, dep.generation, dep.updated_at = spec, dep.generation + 1, utcnow()
            self.add_event("deployment.wanted", name, spec, s)
            s.flush()
            return dep

    def deployment(self, name: str) -> m.Deployment:
        with self.session() as s:
            dep = s.scalar(select(m.Deployment).where(m.Deployment.name == name))
            if dep is None:
                raise NotFoundError(f"deployment {name!r} does not exist")
            return dep

    def deployments(self) -> list[m.Deployment]:
        with self.session() as s:
            return list(s.scalars(select(m.Deployment).order_by(m.Deployment.name)))

    def observe_deployment(self, name: str, status: str, observed: dict[str, Any]) -> None:
        with self.session() as s:
            dep = s.scalar(select(m.Deployment).where(m.Deployment.name == name))
            if dep is not None:
                dep.status, dep.observed, dep.updated_at = status, observed, utcnow()

    def delete_deployment(self, name: str) -> None:
        with self.session() as s:
            dep = s.scalar(select(m.Deployment).where(m.Deployment.name == name))
            if dep is None:
                raise NotFoundError(f"deployment {name!r} does not exist")
            s.delete(dep)
            self.add_event("deployment.deleted", name, {}, s)

    # -- API keys ---------------------------------------------------------------------------
    def add_api_key(self, key_id: str, name: str, key_hash: str, scopes: list[str]) -> m.ApiKey:
        with self.session() as s:
            key = m.ApiKey(key_id=key_id, name=name, key_hash=key_hash, scopes=scopes)
            s.add(key)
            self.add_event("key.created", name, {"key_id": key_id, "scopes": scopes}, s)
            return key

    def api_key(self, key_id: str) -> m.ApiKey | None:
        with self.session() as s:
            return s.scalar(select(m.ApiKey).where(m.ApiKey.key_id == key_id))

    def api_keys(self) -> list[m.ApiKey]:
        with self.session() as s:
            return list(s.scalars(select(m.ApiKey).order_by(m.ApiKey.id)))

    def revoke_api_key(self, key_id: str, when: datetime | None = None) -> None:
        with self.session() as s:
            key = s.scalar(select(m.ApiKey).where(m.ApiKey.key_id == key_id))
            if key is None:
                raise NotFoundError(f"API key {key_id} does not exist")
            key.revoked_at = when or utcnow()
            self.add_event("key.revoked", key.name, {"key_id": key_id}, s)
