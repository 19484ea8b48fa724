"""The Ray launcher's driver side without a cluster: which launcher a setting picks, and
how the workers' messages become progress, restarts and errors (the cluster runs are in
tests/integration/test_ray_train.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.cluster import NodeInfo
from stratum.config import Settings
from stratum.errors import ClusterError, ConfigError, TrainingError
from stratum.train.config import parse_config
from stratum.train.fit import launcher_for
from stratum.train.launcher import LocalLauncher
from stratum.train.loop import Job, Progress
from stratum.train.ray_launcher import RayLauncher, _Tracker


def test_the_setting_picks_the_launcher(settings: Settings) -> None:
    assert isinstance(launcher_for(settings, "run1", 2), LocalLauncher)
    on_ray = settings.model_copy(update={
        "cluster": settings.cluster.model_copy(update={"backend": "ray"})})
    launcher = launcher_for(on_ray, "run1", 3)
    assert isinstance(launcher, RayLauncher) and launcher.workers == 3
    assert (launcher_for(settings, "r", 2).name, launcher.name) == ("local", "ray")


def msg(token: str, step: int, resumed_from: int | None = None) -> dict[str, object]:
    return {"token": token, "progress": Progress(step=step, epochs=8, total_steps=800,
                                                 resumed_from=resumed_from).model_dump()}


def test_a_new_attempt_is_a_restart_with_the_step_it_resumed_from() -> None:
    seen: list[Progress] = []
    t = _Tracker(seen.append)
    for step in (1, 50, 120):
        t.take(msg("a", step))
    time.sleep(0.01)
    t.take(msg("b", 100, resumed_from=100))  # the new group's first report: no step yet
    assert t.restarts[0].resumed_from is None
    t.take(msg("b", 101, resumed_from=100))
    (r,) = t.restarts
    assert (r.attempt, r.last_step, r.resumed_from, r.rank, r.pid) == (0, 120, 100, None, None)
    assert r.recover_s is not None and r.recover_s > 0
    assert t.attempts == 2
    assert [p.attempt for p in seen] == [0, 0, 0, 1, 1, 1]
    assert [p.phase for p in seen].count("restarting") == 1


def test_a_workers_stratum_error_comes_back_as_the_same_class() -> None:
    t = _Tracker(None)
    assert t.error() is None
    t.take({"error": {"type": "ConfigError", "message": "bad", "hint": "fix", "rank": 2}})
    t.take({"error": {"type": "TrainingError", "message": "later", "hint": None, "rank": 0}})
    err = t.error()
    assert isinstance(err, ConfigError) and (err.message, err.hint) == ("bad", "fix")
    t = _Tracker(None)
    t.take({"error": {"type": "KeyError", "message": "not ours", "rank": 0}})
    assert type(t.error()) is TrainingError


def test_unreachable_cluster_is_a_clear_error(settings: Settings) -> None:
    on_ray = settings.model_copy(update={"cluster": settings.cluster.model_copy(
        update={"backend": "ray", "address": "127.0.0.1:1", "connect_timeout_s": 1.0})})
    job = Job(config=parse_config({"dataset": "d", "model": {"name": "mlp"}}), run_id="r",
              dataset="d@x")
    with pytest.raises(ClusterError, match=r"127\.0\.0\.1:1"):
        RayLauncher(on_ray, 2).run(job)


def node(ip: str, cpus: float, gpus: float = 0.0) -> NodeInfo:
    return NodeInfo(node_id=ip, ip=ip, alive=True, head=False,
                    resources={"CPU": cpus, **({"GPU": gpus} if gpus else {})})


def test_gpu_workers_must_fit_on_the_nodes_gpus(settings: Settings) -> None:
    two_gpu_nodes = [node("127.0.0.2", 2, 1), node("127.0.0.3", 2, 1)]
    RayLauncher(settings, 2, gpus_per_worker=1)._check_resources(two_gpu_nodes)
    RayLauncher(settings, 4, gpus_per_worker=0.5)._check_resources(two_gpu_nodes)
    with pytest.raises(ConfigError, match=r"3 workers of 1 GPU need 3 GPUs .* room for 2 "):
        RayLauncher(settings, 3, gpus_per_worker=1)._check_resources(two_gpu_nodes)
    # a worker's GPUs all sit on its own node: two nodes of one GPU hold no 2-GPU worker
    with pytest.raises(ConfigError, match=r"room for 0 such worker"):
        RayLauncher(settings, 1, gpus_per_worker=2)._check_resources(two_gpu_nodes)
    with pytest.raises(ConfigError, match=r"127\.0\.0\.2: 0"):
        RayLauncher(settings, 1, gpus_per_worker=1)._check_resources([node("127.0.0.2", 8)])
    # the setting is the default; 0 asks for none and checks only CPUs
    on_gpus = settings.model_copy(update={"cluster": settings.cluster.model_copy(
        update={"train_gpus_per_worker": 1.0})})
    assert RayLauncher(on_gpus, 2).gpus_per_worker == 1.0
    RayLauncher(settings, 2)._check_resources([node("127.0.0.2", 2)])


def test_the_controllers_handle_is_kept_and_is_no_attempt() -> None:
    t = _Tracker(None)
    handle = object()
    t.take({"controller": handle})
    assert t.controller is handle and t.attempts == 0 and not t.errors


def test_gpus_per_worker_without_ray_is_refused_before_training(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[2] / "examples" / "digits.yaml"
    out = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "train", str(config),
                                   "--gpus-per-worker", "1"])
    assert isinstance(out.exception, ConfigError), out.output
    assert "--backend ray" in (out.exception.hint or "")
    assert not (tmp_path / "home" / "runs").exists()  # no worker was started
