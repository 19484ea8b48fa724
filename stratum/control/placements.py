"""The placement of each backend (``placement.Placement``), made when a deployment first
needs it: the supervisor asks ``Placements.of(spec.backend)`` and never branches on it."""

from __future__ import annotations

from collections.abc import Callable

from stratum.config import Settings
from stratum.control import procs
from stratum.control.placement import LocalPlacement, Placement, replica_job
from stratum.control.procs import Spawn
from stratum.control.ray_placement import RayPlacement


class Placements:
    def __init__(self, settings: Settings, spawn: Spawn = procs.spawn,
                 free_port: Callable[[], int] = procs.free_port) -> None:
        # Ray is imported, and the cluster joined, only when a ray deployment needs it.
        self._makers: dict[str, Callable[[], Placement]] = {
            "local": lambda: LocalPlacement(spawn, free_port),
            "ray": lambda: RayPlacement(settings)}
        self._made: dict[str, Placement] = {}

    def of(self, backend: str) -> Placement:
        """The placement of ``backend`` (a spec's ``backend``: "local" or "ray")."""
        if backend not in self._made:
            self._made[backend] = self._makers[backend]()
        return self._made[backend]


__all__ = ["Placements", "replica_job"]
