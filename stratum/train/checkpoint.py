"""Checkpoints in the artifact store: written atomically, found only through a manifest.

Layout: ``runs/{run_id}/checkpoints/{step:010d}/state.pt`` then ``manifest.json``. The
state is published first (temp + rename, with a sha256 sidecar); the manifest, naming the
state's digest, is published last. A checkpoint without a manifest, or whose bytes do not
match the manifest, is skipped and the next older one is tried, so a save cut short by a
SIGKILL is never loaded. Only plain containers of tensors and numbers are stored, and they
are read back with ``torch.load(weights_only=True)``: no pickled code runs on load.

A sharded checkpoint (fsdp, a parameter server's partitions, fedavg's clients) adds the
files each rank published itself (``publish_files``) before the main rank's manifest, which
names them with their digests; ``Checkpoint.read`` checks a file against it.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from stratum.errors import IntegrityError, NotFoundError, TrainingError
from stratum.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)

STATE, MANIFEST = "state.pt", "manifest.json"


def checkpoint_prefix(run_id: str) -> str:
    return f"runs/{run_id}/checkpoints"


@dataclass
class Checkpoint:
    step: int
    path: str
    state: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # sharded parts: name -> sha256
    artifacts: ArtifactStore | None = None

    def read(self, name: str) -> bytes:
        """A sharded part's bytes, checked against the manifest."""
        if name not in self.files or self.artifacts is None:
            raise NotFoundError(f"checkpoint {self.path} has no file {name!r}")
        blob = self.artifacts.get_bytes(f"{self.path}/{name}")
        if self.artifacts.checksum(f"{self.path}/{name}") != self.files[name]:
            raise IntegrityError(f"checkpoint file {self.path}/{name} does not match its "
                                 "manifest")
        return blob


def publish_files(artifacts: ArtifactStore, run_id: str, step: int,
                  files: dict[str, bytes]) -> dict[str, str]:
    """Publish one rank's parts of the checkpoint of ``step``; returns name -> sha256."""
    base = f"{checkpoint_prefix(run_id)}/{step:010d}"
    return {name: artifacts.put_bytes(f"{base}/{name}", blob) for name, blob in files.items()}


def save_checkpoint(artifacts: ArtifactStore, run_id: str, step: int,
                    state: dict[str, Any], *, keep: int = 2,
                    files: dict[str, str] | None = None) -> float:
    """Publish ``state`` for ``step`` (``files``: sharded parts already published, with
    their digests); returns the seconds it took. Keeps the newest ``keep``."""
    t0 = time.perf_counter()
    buf = io.BytesIO()
    torch.save(state, buf)
    base = f"{checkpoint_prefix(run_id)}/{step:010d}"
    digest = artifacts.put_bytes(f"{base}/{STATE}", buf.getvalue())
    manifest = {"step": step, "state": STATE, "sha256": digest, "bytes": buf.tell(),
                "created": time.time(), "position": state.get("position", {}),
                "files": files or {}}
    artifacts.put_bytes(f"{base}/{MANIFEST}", json.dumps(manifest).encode())
    for old in list_checkpoints(artifacts, run_id)[keep:]:
        old_base = f"{checkpoint_prefix(run_id)}/{old:010d}"
        # manifest first: never a manifest without its state and parts
        rest = sorted(p for p in artifacts.list(old_base) if not p.endswith("/" + MANIFEST))
        for path in [f"{old_base}/{MANIFEST}", *rest]:
            artifacts.delete(path)
    return time.perf_counter() - t0


def list_checkpoints(artifacts: ArtifactStore, run_id: str) -> list[int]:
    """Steps that have a manifest, newest first."""
    steps = []
    for path in artifacts.list(checkpoint_prefix(run_id)):
        parts = path.split("/")
        if parts[-1] == MANIFEST and parts[-2].isdigit():
            steps.append(int(parts[-2]))
    return sorted(steps, reverse=True)


def load_latest(artifacts: ArtifactStore, run_id: str) -> Checkpoint | None:
    """The newest complete, verified checkpoint, or None when the run has none."""
    for step in list_checkpoints(artifacts, run_id):
        base = f"{checkpoint_prefix(run_id)}/{step:010d}"
        try:
            manifest = json.loads(artifacts.get_bytes(f"{base}/{MANIFEST}"))
            blob = artifacts.get_bytes(f"{base}/{manifest['state']}")
            if artifacts.checksum(f"{base}/{manifest['state']}") != manifest["sha256"]:
                raise IntegrityError(f"checkpoint {base} does not match its manifest")
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            files = dict(manifest.get("files") or {})
            for name, sha in files.items():  # every part there, as the manifest says
                if artifacts.checksum(f"{base}/{name}") != sha:
                    raise IntegrityError(f"checkpoint file {base}/{name} does not match")
        except (IntegrityError, NotFoundError, KeyError, ValueError, RuntimeError,
                EOFError) as exc:
            log.warning("skipping checkpoint %s: %s", base, exc)
            continue
        return Checkpoint(step=step, path=base, state=state, files=files, artifacts=artifacts)
    return None


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def snapshot(obj: Any) -> Any:
    """A CPU copy of a nested state (dicts, lists, tensors), safe to write while training
    goes on mutating the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in a background thread: the loop pays only for a snapshot copy
    (and for waiting if the previous save is still in flight — at most one is)."""

    def __init__(self, artifacts: ArtifactStore, run_id: str, keep: int = 2) -> None:
        self.artifacts, self.run_id, self.keep = artifacts, run_id, keep
        self.blocking_s: list[float] = []  # time the training loop stood still per save
        self.write_s: list[float] = []  # time each save took in the background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, step: int, state: dict[str, Any],
               files: dict[str, str] | None = None) -> None:
        t0 = time.perf_counter()
        self.wait()
        snap = snapshot(state)
        self._thread = threading.Thread(target=self._write, args=(step, snap, files),
                                        daemon=True, name=f"checkpoint-{step}")
        self._thread.start()
        self.blocking_s.append(time.perf_counter() - t0)

    def _write(self, step: int, state: dict[str, Any], files: dict[str, str] | None) -> None:
        try:
            self.write_s.append(save_checkpoint(self.artifacts, self.run_id, step, state,
                                                keep=self.keep, files=files))
        except BaseException as exc:  # surfaced on the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise TrainingError(f"writing a checkpoint of run {self.run_id} failed: {err}",
                                hint="check the artifact store is writable") from err
