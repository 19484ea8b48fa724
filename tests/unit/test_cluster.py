"""Fast tests of the cluster parts that need no Ray cluster: addresses and the bounded
probe (against a real refused port and a real non-Ray server), the storage a cluster of
several nodes asks for, where a deployment's replicas run (``placed_spec``), how Ray
placement spreads replicas over nodes, and the local cluster's record and process tree."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.cluster import NodeInfo, local, probe, require_shared_storage
from stratum.cluster.gcs import split_address
from stratum.cluster.procfs import alive, descendants, kill_all
from stratum.config import Settings, load_settings
from stratum.control.placement import Failed, Job, placed_spec
from stratum.control.ray_placement import RayPlacement
from stratum.control.spec import DeploymentSpec
from stratum.errors import ClusterError, ConfigError, ConflictError, NotFoundError


def test_addresses_are_host_and_port() -> None:
    assert split_address(" 10.0.0.5:6380 ") == ("10.0.0.5", 6380)
    for bad in ("10.0.0.5", "ray://head:10001", ":6380", "head:port"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            split_address(bad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def not_ray() -> Iterator[str]:
    """A TCP server that answers like Redis does to anything it does not understand."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"-ERR unknown command\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


def test_probe_fails_fast_and_says_what_it_found(not_ray: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster") as refused:
        probe(f"127.0.0.1:{free_port()}", timeout_s=2)
    assert "stratum cluster up" in str(refused.value)
    with pytest.raises(ClusterError, match="not as a Ray GCS"):
        probe(not_ray, timeout_s=2)
    assert time.monotonic() - t0 < 3  # ray.init would retry these for minutes


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return load_settings(home=tmp_path / "home", **kw)


def test_a_cluster_of_several_nodes_refuses_this_machines_files(tmp_path: Path) -> None:
    embedded = _settings(tmp_path)
    require_shared_storage(embedded, 1)  # one node sees its own files
    with pytest.raises(ConfigError) as err:
        require_shared_storage(embedded, 3)
    msg = str(err.value)
    assert "3 nodes" in msg and "SQLite" in msg and "local folder" in msg
    assert "postgresql://" in msg and "s3://" in msg and "redis://" in msg
    require_shared_storage(embedded.model_copy(update={
        "metadata_url": "postgresql+psycopg://db/stratum", "artifact_url": "s3://b/a"}),
        3, queue=False)  # training needs no queue
    shared = _settings(tmp_path, metadata_url="postgresql+psycopg://db/s",
                       artifact_url="s3://bucket/a", queue_url="redis://r:6379/0")
    require_shared_storage(shared, 3)
    with pytest.raises(ConfigError, match="local folder"):
        require_shared_storage(shared.model_copy(update={"artifact_url": "file:///data"}), 2)


def _spec(**kw: object) -> DeploymentSpec:
    return DeploymentSpec.model_validate({"model": "m", "ref": "1", "version": 1,
                                          "port": 8000, **kw})


def test_where_replicas_run_request_then_current_then_settings(tmp_path: Path) -> None:
    s = _settings(tmp_path, cluster={"backend": "ray", "replica_cpus": 2})
    new = placed_spec(_spec(), None, s, None, None, None)
    assert (new.backend, new.cpus, new.gpus) == ("ray", 2.0, 0.0)
    asked = placed_spec(_spec(), None, s, "local", 0.5, 1, )
    assert (asked.backend, asked.cpus, asked.gpus) == ("local", 0.5, 1.0)
    kept = placed_spec(_spec(), _spec(backend="ray", cpus=3.0), _settings(tmp_path),
                       None, None, None)
    assert (kept.backend, kept.cpus) == ("ray", 3.0)  # a redeploy keeps what it had
    with pytest.raises(ConflictError, match="undeploy it"):
        placed_spec(_spec(), _spec(backend="local"), s, "ray", None, None)
    with pytest.raises(Exception, match="greater than 0"):
        placed_spec(_spec(), None, s, None, 0.0, None)


def _node(i: int, cpus: float = 2.0, gpus: float = 0.0) -> NodeInfo:
    return NodeInfo(node_id=f"n{i}", ip=f"127.0.0.{i}", alive=True, head=i == 2,
                    resources={"CPU": cpus, "GPU": gpus})


def _job(name: str, group: str = "a", cpus: float = 1.0, gpus: float = 0.0) -> Job:
    return Job(name, group, "stratum.serve", [], {}, Path("/x"), cpus, gpus)


def test_ray_placement_spreads_a_deployment_over_nodes(tmp_path: Path) -> None:
    place = RayPlacement(_settings(tmp_path))  # Ray is not imported to choose
    nodes = [_node(2), _node(3), _node(4)]
    chosen = []
    for i in range(4):
        node = place._choose(nodes, _job(f"a{i}"))
        assert node is not None
        place._placed[f"a{i}"] = ("a", node.node_id, 1.0, 0.0)
        chosen.append(node.ip)
    assert sorted(chosen) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    # Another deployment starts on the nodes with fewest of its own, then of ours.
    other = place._choose(nodes, _job("b0", group="b"))
    assert other is not None and other.ip in ("127.0.0.3", "127.0.0.4")
    # A node where a replica was just lost is avoided; one too small never chosen.
    place._suspect["n3"] = time.monotonic()
    assert place._choose(nodes, _job("b1", group="b")).ip == "127.0.0.4"  # type: ignore[union-attr]
    assert place._choose([_node(5, cpus=1)], _job("big", cpus=2)) is None
    assert place._choose([_node(5), _node(6, gpus=1)], _job("g", gpus=1)).ip == "127.0.0.6"  # type: ignore[union-attr]


def test_a_start_that_never_got_a_process_counts_as_exited() -> None:
    f = Failed("not placed on the Ray cluster: cannot reach it")
    assert not f.alive() and f.returncode is None and f.pid == 0
    assert "cannot reach" in f.log_tail()


def test_no_local_cluster_and_clear_cli_answers(tmp_path: Path) -> None:
    assert local.read(tmp_path / "home") is None
    runner = CliRunner()
    down = runner.invoke(app, ["--home", str(tmp_path / "home"), "cluster", "down"])
    assert isinstance(down.exception, NotFoundError), down.output
    status = runner.invoke(app, ["--home", str(tmp_path / "home"), "cluster", "status"])
    assert isinstance(status.exception, ConfigError)
    assert "stratum cluster up" in str(status.exception)


def test_a_recorded_cluster_never_kills_its_head(tmp_path: Path) -> None:
    c = local.LocalCluster(address="127.0.0.2:7000", temp_dir="/tmp/x", auth_token_file="t",
                           started=0.0, nodes=[
                               local.LocalNode(ip="127.0.0.2", pid=2**22 + 1, head=True,
                                               cpus=1, gpus=0, log="l"),
                               local.LocalNode(ip="127.0.0.3", pid=2**22 + 2, head=False,
                                               cpus=1, gpus=0, log="l")])
    with pytest.raises(ConflictError, match="head node"):
        c.kill_node("127.0.0.2")
    with pytest.raises(ClusterError, match=r"no node 127\.0\.0\.9"):
        c.node_pids("127.0.0.9")
    assert c.kill_node("127.0.0.3") == []  # that node's process is gone already


def test_a_process_tree_is_found_and_killed() -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(descendants(parent.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = descendants(parent.pid)
        assert len(tree) == 2
        kill_all([parent.pid, *tree])
        parent.wait(5)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in tree)
    finally:
        parent.kill()
        parent.wait()
