"""Start N worker processes and keep the group alive, elastically like torchrun.

``LocalLauncher`` starts ``python -P -m stratum.train.worker JOB.json`` N times in one
process group, with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (a fresh free port per
attempt). When any worker dies, the whole group is killed and started again; the loop in
every worker resumes from the run's newest complete checkpoint, so at most one
checkpoint interval of work is lost. A worker that exits with a StratumError (bad config,
NaN loss) is not restarted: the error is raised here, unchanged. After
``settings.train.max_restarts`` restarts the launcher gives up.

``fit.launcher_for`` picks the implementation from ``cluster.backend``: this one, or
``RayLauncher`` (``ray_launcher.py``), which runs the same worker body in Ray Train.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stratum import errors
from stratum.config import Settings
from stratum.config.child import start_python
from stratum.errors import StratumError, TrainingError
from stratum.train.loop import Job, Progress


@dataclass
class Restart:
    attempt: int  # the attempt that failed
    rank: int | None  # None where the launcher cannot tell (Ray restarts the whole group)
    pid: int | None
    returncode: int | None
    died_at: float  # time.time() when the launcher saw the death
    last_step: int  # last step rank 0 reported before the death
    resumed_from: int | None = None  # checkpoint step the next attempt started from
    recover_s: float | None = None  # from the death to the first step of the next attempt


@dataclass
class LaunchReport:
    attempts: int
    wall_s: float
    restarts: list[Restart] = field(default_factory=list)


class Launcher(Protocol):
    name: str  # the backend, recorded in the model's lineage

    def run(self, job: Job) -> LaunchReport: ...


def run_dir(settings: Settings, run_id: str) -> Path:
    """The local folder of one run: job file, progress, worker logs, ``workers.json``."""
    return Path(settings.home).expanduser() / "runs" / run_id


def worker_pids(folder: Path) -> list[int]:
    """Pids of the current attempt's workers (rank order), from ``workers.json``; empty
    before the first spawn. For operators and tests that need to find or kill a worker."""
    try:
        return [int(pid) for pid in json.loads((folder / "workers.json").read_text())["pids"]]
    except (FileNotFoundError, ValueError, KeyError):
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLauncher:
    """Worker processes on this machine; see the module docstring."""

    name = "local"

    def __init__(self, settings: Settings, run_dir: Path, workers: int,
                 on_progress: Callable[[Progress], None] | None = None,
                 poll_s: float = 0.05) -> None:
        self.settings, self.run_dir, self.workers = settings, run_dir, workers
        self.on_progress, self.poll_s = on_progress, poll_s
        self.max_restarts = settings.train.max_restarts
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def run(self, job: Job) -> LaunchReport:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        job.progress_file = str(self.run_dir / "progress.json")
        if job.config.threads is None and self.settings.train.threads_per_worker is None:
            # Split the cores between the workers instead of oversubscribing them.
            share = max(1, (os.cpu_count() or 1) // self.workers)
            job.config = job.config.model_copy(update={"threads": share})
        report = LaunchReport(attempts=0, wall_s=0.0)
        t0 = time.perf_counter()
        try:
            while True:
                job.attempt = report.attempts
                report.attempts += 1
                failed = self._attempt(job, report)
                if failed is None:
                    break
                self._give_up_or_retry(job, report, failed)
        finally:
            self._stop_group()
        report.wall_s = time.perf_counter() - t0
        return report

    # -- one attempt ----------------------------------------------------------------------
    def _attempt(self, job: Job, report: LaunchReport) -> Restart | None:
        for stale in [*self.run_dir.glob("error-*.json"), self.run_dir / "progress.json"]:
            stale.unlink(missing_ok=True)
        job_file = self.run_dir / "job.json"
        job_file.write_text(job.model_dump_json())
        self._spawn(job_file)
        last = Progress()
        pending = report.restarts[-1] if report.restarts else None
        while True:
            time.sleep(self.poll_s)
            last = self._read_progress(last)
            if pending is not None and last.attempt == job.attempt and last.phase == "train" \
                    and last.step > (last.resumed_from or 0):
                pending.resumed_from = last.resumed_from
                pending.recover_s = time.time() - pending.died_at
                pending = None
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return None
            dead = [(rank, c) for rank, c in enumerate(codes) if c is not None and c != 0]
            if dead:
                # Once one worker is gone its peers fail too, often before the next poll:
                # name the one a signal killed, not the first rank that exited.
                rank, code = min(dead, key=lambda d: (d[1] >= 0, d[0]))
                died = Restart(attempt=job.attempt, rank=rank, pid=self.procs[rank].pid,
                               returncode=code, died_at=time.time(), last_step=last.step)
                self._stop_group()
                return died

    def _spawn(self, job_file: Path) -> None:
        port = free_port()
        base = {**self.settings.child_env(), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port), "WORLD_SIZE": str(self.workers),
                "LOCAL_WORLD_SIZE": str(self.workers)}
        self.procs = []
        for rank in range(self.workers):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            log = (self.run_dir / f"worker-{rank}.log").open("ab")
            # One process group for the whole set, so one signal stops every worker.
            group = 0 if rank == 0 else self.procs[0].pid
            self.procs.append(start_python(
                "stratum.train.worker", [str(job_file)],
                env=env, stdout=log, stderr=subprocess.STDOUT, process_group=group,
            ))
            log.close()
        (self.run_dir / "workers.json").write_text(json.dumps(
            {"pids": self.pids, "port": port, "time": time.time()}))

    def _stop_group(self, grace: float = 5.0) -> None:
        if not self.procs:
            return
        pgid = self.procs[0].pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if all(p.poll() is not None for p in self.procs):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(0.02)
        for p in self.procs:  # reap, even a member that left the group
            if p.poll() is None:
                p.kill()
                p.wait(5)

    def _read_progress(self, last: Progress) -> Progress:
        path = self.run_dir / "progress.json"
        try:
            current = Progress.model_validate_json(path.read_text())
        except (FileNotFoundError, ValueError):
            return last
        if current != last and self.on_progress is not None:
            self.on_progress(current)
        return current

    # -- after a death ------------------------------------------------------------------
    def _give_up_or_retry(self, job: Job, report: LaunchReport, died: Restart) -> None:
        for path in sorted(self.run_dir.glob("error-*.json")):
            doc = json.loads(path.read_text())
            cls = getattr(errors, doc.get("type", ""), TrainingError)
            if not (isinstance(cls, type) and issubclass(cls, StratumError)):
                cls = TrainingError
            raise cls(doc["message"], hint=doc.get("hint"))
        if len(report.restarts) >= self.max_restarts:
            raise TrainingError(
                f"worker rank {died.rank} (pid {died.pid}) exited with {died.returncode}; "
                f"gave up after {self.max_restarts} restarts. Last log lines:\n"
                + self._log_tail(died.rank),
                hint="raise train.max_restarts or fix the cause in the worker log",
            )
        report.restarts.append(died)
        if self.on_progress is not None:
            self.on_progress(Progress(attempt=job.attempt + 1, phase="restarting",
                                      step=died.last_step))

    def _log_tail(self, rank: int | None, lines: int = 15) -> str:
        path = self.run_dir / f"worker-{rank}.log"
        if rank is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
