"""Training on Ray (issue 14, bars 1 and 2), on one local 3-node Ray cluster shared by the
module, with metadata in a fresh PostgreSQL database and artifacts in a moto S3 server:

1. ``stratum train examples/mnist.yaml --backend ray --workers 3`` (the CLI, a real
   process) registers the mnist cnn with test accuracy >= 0.97, the backend in its lineage.
2. A worker node killed hard mid-training (SIGKILL of its ``ray start``, raylet, agents
   and Ray workers): the run resumes from the last checkpoint on the nodes that are left
   and finishes by itself, within 1 point of the uninterrupted run, losing at most one
   checkpoint interval of work.

Both runs train the full example (8 epochs); run 2 kills the node halfway through the
third epoch. The node-kill test leaves the cluster one node short, so it runs last.

Between them, every other strategy on the same cluster (issues 14 and 17: "every strategy
plugs into the same seam"), each a short digits run since Ray's start-up is most of its
time: parameter_server (2 workers + 2 servers: 4 Ray Train workers) and fsdp within a point
of ddp (the same config over 2 local worker processes: the sync parameter server and fsdp
make ddp's update), fedavg, an ensemble whose members train in Ray Train workers,
``stratum tune --backend ray`` with 2 trials in 2 processes, a progress callback that gives
up (Ctrl-C, a pruned trial) stopping the run on the cluster, and ``--gpus-per-worker``
refused on a cluster without GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stratum.cluster import local
from stratum.config import Settings, load_settings
from stratum.data import ingest
from stratum.store import Store
from stratum.store import models as m
from stratum.train import Progress, fit, parse_config
from stratum.train.checkpoint import list_checkpoints
from tests.integration.train_helpers import EXAMPLES, example
from tests.services import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.integration

WORKERS = 3
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    home = tmp_path_factory.mktemp("ray-cluster")
    with pytest.MonkeyPatch.context() as env:
        # The head's GCS declares a silent node dead after about 3 s instead of Ray's
        # default of about 30 (period x failure threshold, plus timeouts): the death of a
        # node is what bar 2 waits on, and how soon Ray tells is Ray's setting, not ours.
        for key, value in HEALTH_CHECK.items():
            env.setenv(key, value)
        started = local.start(home, nodes=3, cpus_per_node=2)
    try:
        yield started
    finally:
        import ray

        ray.shutdown()  # this process's driver, before its cluster goes
        local.stop(home)


@pytest.fixture(scope="module")
def pg_module() -> Iterator[str]:
    url, name = fresh_pg_database()
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, pg_module: str, s3_server: str,
             cluster: local.LocalCluster) -> Settings:
    bucket = f"stratum-{uuid.uuid4().hex[:8]}"
    httpx.put(f"{s3_server}/{bucket}").raise_for_status()
    s = load_settings(
        home=tmp_path_factory.mktemp("ray-train") / "home", metadata_url=pg_module,
        artifact_url=f"s3://{bucket}/artifacts",
        artifact_options={"key": "test", "secret": "test",
                          "client_kwargs": {"endpoint_url": s3_server,
                                            "region_name": "us-east-1"}},
        cluster={"backend": "ray", "address": cluster.address})
    store = Store.open(s)
    try:
        ingest("builtin:mnist", "mnist", store)
    finally:
        store.close()
    return s


@pytest.fixture(scope="module")
def store(settings: Settings) -> Iterator[Store]:
    s = Store.open(settings)
    yield s
    s.close()


def cli_env(s: Settings) -> dict[str, str]:
    """The settings of ``s`` as a user would give them to the CLI: variables and a flag."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUM_")}
    return {**env, "STRATUM_HOME": str(s.home), "STRATUM_METADATA_URL": str(s.metadata_url),
            "STRATUM_ARTIFACT_URL": str(s.artifact_url),
            "STRATUM_ARTIFACT_OPTIONS": json.dumps(s.artifact_options),
            "STRATUM_CLUSTER__ADDRESS": s.cluster.address or ""}


@pytest.fixture(scope="module")
def uninterrupted(settings: Settings, store: Store) -> m.ModelVersion:
    exe = Path(sys.executable).with_name("stratum")
    out = subprocess.run(
        [str(exe), "train", str(EXAMPLES / "mnist.yaml"), "--backend", "ray",
         "--workers", str(WORKERS), "--json"],
        env=cli_env(settings), capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    doc = json.loads(out.stdout)
    return store.meta.model_version(doc["name"], int(doc["version"]))


def summary(store: Store, mv: m.ModelVersion) -> dict[str, Any]:
    return dict(store.meta.run(mv.run_id or "").summary)


def test_cli_trains_mnist_on_ray_with_three_workers(
        store: Store, uninterrupted: m.ModelVersion) -> None:
    mv = uninterrupted
    print(f"\nray, {WORKERS} workers: {mv.metrics}; {summary(store, mv).get('wall_s'):.1f} s")
    assert mv.metrics["accuracy"] >= 0.97, mv.metrics
    extra = mv.spec["lineage"]["extra"]
    assert (extra["backend"], extra["strategy"], extra["workers"]) == ("ray", "ddp", WORKERS)
    assert store.meta.aliases(mv.name).get("candidate") == mv.version
    done = summary(store, mv)
    assert done["backend"] == "ray" and done["restarts"] == []
    # Checkpoints went to the artifact store (S3), metrics to the metadata store (PostgreSQL).
    assert list_checkpoints(store.artifacts, mv.run_id or "")
    keys = {r.key for r in store.meta.metrics(mv.run_id or "")}
    assert {"loss", "val_accuracy", "test_accuracy"} <= keys


# -- every strategy on Ray: short digits runs -------------------------------------------

DIGITS_EPOCHS = 10  # 0.96-0.97 on digits; Ray starting the worker group is most of a run


@pytest.fixture(scope="module")
def digits(settings: Settings, store: Store) -> str:
    ingest("builtin:digits", "digits", store)
    return "digits"


def digits_config(name: str, **changes: Any) -> Any:
    return parse_config(example("digits", name=name, epochs=DIGITS_EPOCHS, **changes))


@pytest.fixture(scope="module")
def digits_ddp(settings: Settings, store: Store, digits: str) -> m.ModelVersion:
    """ddp over 2 local worker processes, the same stores: the baseline, without the 15-30 s
    of a Ray worker group's start (the loop's numbers are the same under both launchers)."""
    here = settings.model_copy(update={
        "cluster": settings.cluster.model_copy(update={"backend": "local"})})
    return fit(digits_config("digits-ddp", workers=2), here, store=store)


def on_ray(store: Store, mv: m.ModelVersion, strategy: str, workers: int) -> dict[str, Any]:
    """Assert ``mv`` was trained on Ray as asked; its run summary."""
    extra = mv.spec["lineage"]["extra"]
    assert (extra["backend"], extra["strategy"], extra["workers"]) == ("ray", strategy, workers)
    assert store.meta.aliases(mv.name).get("candidate") == mv.version
    done = summary(store, mv)
    assert done["backend"] == "ray" and done["restarts"] == []
    return done


def checkpoint_files(store: Store, mv: m.ModelVersion) -> set[str]:
    run_id = mv.run_id or ""
    step = list_checkpoints(store.artifacts, run_id)[0]
    return {p.rsplit("/", 1)[-1]
            for p in store.artifacts.list(f"runs/{run_id}/checkpoints/{step:010d}")}


@pytest.mark.parametrize(("strategy", "changes"), [
    ("parameter_server", {"parameter_server": {"servers": 2}}),
    ("fsdp", {}),
])
def test_parameter_server_and_fsdp_on_ray_within_a_point_of_ddp(
        settings: Settings, store: Store, digits_ddp: m.ModelVersion, strategy: str,
        changes: dict[str, Any]) -> None:
    t0 = time.perf_counter()
    mv = fit(digits_config(f"digits-ray-{strategy}", strategy=strategy, workers=2, **changes),
             settings, store=store)
    print(f"\n{strategy} on ray: {mv.metrics['accuracy']:.3f}, ddp "
          f"{digits_ddp.metrics['accuracy']:.3f}; {time.perf_counter() - t0:.1f} s")
    done = on_ray(store, mv, strategy, 2)
    assert mv.metrics["accuracy"] >= 0.95
    assert abs(mv.metrics["accuracy"] - digits_ddp.metrics["accuracy"]) <= 0.01
    assert done["global_step"] == summary(store, digits_ddp)["global_step"]
    files = checkpoint_files(store, mv)
    if strategy == "parameter_server":  # ranks 2 and 3 served: each published its partition
        assert {"server-0.pt", "server-1.pt", "workers.pt"} <= files
    else:  # each of the 2 workers held and saved its own shard
        assert {"dcp-metadata", "dcp-__0_0.distcp", "dcp-__1_0.distcp"} <= files
        held = [w["param_bytes"] + w["optimizer_bytes"] for w in done["memory"]]
        full = [w["param_bytes"] + w["optimizer_bytes"] for w in
                summary(store, digits_ddp)["memory"]]
        assert all(0.45 <= mine / whole <= 0.55 for mine, whole in zip(held, full, strict=True))


def test_fedavg_on_ray_three_clients(settings: Settings, store: Store,
                                     digits_ddp: m.ModelVersion) -> None:
    t0 = time.perf_counter()
    mv = fit(digits_config("digits-ray-fedavg", strategy="fedavg", workers=3,
                           fedavg={"partition": "iid", "local_epochs": 1}),
             settings, store=store)
    print(f"\nfedavg on ray, 3 clients: {mv.metrics['accuracy']:.3f}, ddp "
          f"{digits_ddp.metrics['accuracy']:.3f}; {time.perf_counter() - t0:.1f} s")
    on_ray(store, mv, "fedavg", 3)
    # the same sample passes as ddp (issue 17's bar for fedavg: within 3 points)
    assert mv.metrics["accuracy"] >= digits_ddp.metrics["accuracy"] - 0.03
    assert {f"client-{c}.pt" for c in range(3)} <= checkpoint_files(store, mv)


def test_ensemble_members_train_in_ray_workers(settings: Settings, store: Store,
                                               digits: str) -> None:
    t0 = time.perf_counter()
    mv = fit(digits_config("digits-ray-ensemble", strategy="ensemble", workers=3,
                           ensemble={"combine": "soft", "members": [{}, {}, {}]}),
             settings, store=store)
    rows = summary(store, mv)["members"]
    scores = [r["test"]["accuracy"] for r in rows]
    print(f"\nensemble on ray: members {scores}, soft vote {mv.metrics['accuracy']:.3f}; "
          f"{time.perf_counter() - t0:.1f} s")
    on_ray(store, mv, "ensemble", 3)
    assert mv.spec["framework"] == "ensemble" and len(rows) == 3
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    assert all(r["global_step"] for r in rows)  # each member trained (by the loop)
    # on 179 test rows a vote and its members differ by an image or two (docs/training.md);
    # the quality bars are test_train_ensemble.py's, this is the seam
    assert min(scores) >= 0.95 and mv.metrics["accuracy"] >= min(scores)


def test_tune_on_ray_runs_each_trial_as_a_ray_train_run(
        settings: Settings, store: Store, digits: str,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("tune-ray")
    (folder / "space.yaml").write_text("optimizer.lr: {float: [0.0005, 0.01], log: true}\n")
    config = folder / "digits.yaml"
    config.write_text(json.dumps(example("digits", name="digits-ray-tune", epochs=3)))
    exe = Path(sys.executable).with_name("stratum")
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(exe), "tune", str(config), "--space", str(folder / "space.yaml"), "--trials", "2",
         "--parallel", "2", "--backend", "ray", "--json"],
        env=cli_env(settings), capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    doc = json.loads(out.stdout)
    print(f"\ntune on ray: {doc['states']}, best {doc['best']}; "
          f"{time.perf_counter() - t0:.1f} s")
    assert sum(doc["states"].values()) == 2 and doc["states"]["FAIL"] == 0
    best = store.meta.model_version("digits-ray-tune", int(doc["version"]))
    extra = best.spec["lineage"]["extra"]
    assert extra["backend"] == "ray" and extra["search"]["id"] == doc["search"]
    trials = store.meta.runs("digits-ray-tune")
    assert len(trials) == 2
    for run in trials:  # every trial's training ran on the cluster
        assert run.summary.get("backend") == "ray", run.summary


def test_a_progress_callback_that_gives_up_stops_the_run_on_ray(
        settings: Settings, store: Store, digits: str) -> None:
    """Ctrl-C (or a pruned search trial) raises in the progress callback, in the caller's
    thread: the run on the cluster is aborted, not left to finish or to be retried."""
    # Many epochs: the abort's latency is the same however long the run would go on, and
    # under load a few more epochs finish before the workers are stopped.
    epochs = 60
    cfg = parse_config(example("digits", name="digits-ray-stopped", epochs=epochs, workers=2))

    def give_up(p: Progress) -> None:
        if p.phase == "val":
            raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, settings, progress=give_up, store=store)
    took = time.perf_counter() - t0
    (run,) = store.meta.runs("digits-ray-stopped")
    done = [r.value for r in store.meta.metrics(run.id, "val_loss")]
    print(f"\nstopped after {len(done)} of {epochs} epochs, {took:.1f} s")
    assert run.status == "stopped"  # resumable with --resume, like a local Ctrl-C
    assert len(done) < epochs / 4
    assert not store.meta.model_versions("digits-ray-stopped")


def test_gpus_per_worker_on_a_cluster_without_gpus_is_one_clear_error(
        settings: Settings, store: Store, digits: str) -> None:
    exe = Path(sys.executable).with_name("stratum")
    out = subprocess.run(
        [str(exe), "train", str(EXAMPLES / "digits.yaml"), "--backend", "ray", "--workers",
         "2", "--gpus-per-worker", "1", "--name", "digits-ray-gpu", "--json"],
        env=cli_env(settings), capture_output=True, text=True, timeout=300, check=False)
    print(f"\n{out.stderr.strip()}")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    assert "2 workers of 1 GPU need 2 GPUs" in out.stderr
    assert "room for 0 such worker(s)" in out.stderr and "Traceback" not in out.stderr
    assert not store.meta.model_versions("digits-ray-gpu")
    (run,) = store.meta.runs("digits-ray-gpu")
    assert run.status == "failed"


def test_killed_worker_node_resumes_from_the_last_checkpoint(
        settings: Settings, store: Store, cluster: local.LocalCluster,
        uninterrupted: m.ModelVersion) -> None:
    cfg = parse_config(example("mnist", name="mnist-node-kill", workers=WORKERS))
    victim = next(n for n in cluster.nodes if not n.head)
    killed: dict[str, Any] = {}

    def kill_node_mid_epoch(p: Progress) -> None:
        if killed or p.phase != "train" or p.attempt != 0 or not p.epochs:
            return
        per_epoch = p.total_steps // p.epochs
        if p.step >= 2 * per_epoch + per_epoch // 2:  # halfway through the third epoch
            killed.update(step=p.step, pids=cluster.kill_node(victim.ip))

    mv = fit(cfg, settings, progress=kill_node_mid_epoch, store=store)  # no help from us

    assert killed and killed["pids"], "the run ended before the node could be killed"
    done = summary(store, mv)
    print(f"\nkilled node {victim.ip} at step {killed['step']}: {done['restarts']}; accuracy "
          f"{mv.metrics['accuracy']:.3f} (uninterrupted {uninterrupted.metrics['accuracy']:.3f})"
          f"; {done['wall_s']:.1f} s")
    restart = done["restarts"][0]
    assert restart["last_step"] >= killed["step"]
    assert restart["resumed_from"] is not None
    # Lost work: from the last step seen before the death back to the checkpoint resumed.
    assert restart["resumed_from"] >= restart["last_step"] - cfg.checkpoint_every
    assert restart["recover_s"] is not None and restart["recover_s"] > 0
    assert done["global_step"] == summary(store, uninterrupted)["global_step"]
    assert mv.spec["lineage"]["extra"]["backend"] == "ray"
    assert store.meta.run(mv.run_id or "").status == "completed"
    assert abs(mv.metrics["accuracy"] - uninterrupted.metrics["accuracy"]) <= 0.01, (
        mv.metrics, uninterrupted.metrics)
