"""Deployments that follow an alias, rolled onto where it points now.

Each tick the supervisor asks this first (blocking: it reads aliases and writes specs);
``reconcile.alias_move`` decides, this writes. The write is conditional on the generation
it decided on, so a deploy that landed meanwhile is never overwritten by a stale roll.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stratum.control.reconcile import alias_move
from stratum.control.spec import load_spec
from stratum.errors import ConflictError
from stratum.store.metadata import MetadataStore


def follow_aliases(meta: MetadataStore, rows: Mapping[str, Any],
                   given_up: Mapping[str, set[int]], failed: dict[str, Exception]) -> bool:
    """Roll each following deployment in ``rows`` (name → stored row) whose alias moved
    to a version not given up; True when one was rolled. Errors go to ``failed``."""
    moved = False
    for name, row in rows.items():
        try:
            spec = load_spec(row.spec)
            aliases = meta.aliases(spec.model) if spec and spec.follow else {}
            new = alias_move(spec, aliases, given_up.get(name, set()))
            if spec is None or new is None:
                continue
            meta.put_deployment(name, new.model_dump(mode="json"),
                                if_generation=row.generation)
            meta.add_event("deployment.follow", name, {
                "alias": spec.follow, "from": spec.version, "to": new.version})
            moved = True
        except ConflictError:
            moved = True  # changed meanwhile: the next read sees the new spec
        except Exception as exc:
            failed.setdefault(name, exc)
    return moved
