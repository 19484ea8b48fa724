"""``stratum data ingest --backend ray`` (issue 14, data at scale) on one local 2-node Ray
cluster shared by the module (1 CPU a node, so the units are spread over both nodes).

A CSV of 40,000 rows made from sklearn's breast-cancer data (jittered copies of the real
rows, a categorical column, missing values, duplicated rows, rows with text in a number
column, a missing target) is ingested locally and on Ray: the same version hash, the same
cleaning counts, the same statistics and byte-identical shard files. The nodes never touch
the store, so the home stays on SQLite and a local folder even with 2 nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.cluster import local
from stratum.cluster.procfs import alive, processes_mentioning
from stratum.config import Settings, load_settings
from stratum.data import ingest
from stratum.data.ray_prepare import RayPreparer
from stratum.errors import ClusterError, DataError, StratumError
from stratum.store import Store
from tests.services import free_port

pytestmark = pytest.mark.integration

ROWS = 40_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    import ray

    home = tmp_path_factory.mktemp("ray-ingest-cluster")
    started = local.start(home, nodes=2, cpus_per_node=1)
    try:
        yield started
    finally:
        ray.shutdown()  # this process's driver, before its cluster goes
        pids = local.stop(home)
        # Ray Data's helper actors on the head (_StatsActor and the like) hold the head's
        # `ray start` past its SIGTERM grace; `stop` SIGKILLs them, and they are gone a
        # moment later.
        end = time.monotonic() + 10
        while [p for p in pids if alive(p)] and time.monotonic() < end:
            time.sleep(0.1)
        assert pids and not [p for p in pids if alive(p)]
        assert not processes_mentioning(started.temp_dir)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(d.data), ROWS)
    x = d.data[idx][:, :8] * rng.normal(1.0, 0.01, (ROWS, 8))
    lines = ["radius,texture,perimeter,area,smooth,compact,concav,points,size,label"]
    for i, (row, y) in enumerate(zip(x, d.target[idx], strict=True)):
        cells = [f"{v:.6g}" for v in row] + ["large" if row[3] > 700 else "small",
                                             d.target_names[y]]
        if i % 97 == 5:
            cells[1] = ""  # missing: imputed with the column's mean
        if i % 89 == 3:
            cells[8] = ""  # missing category: imputed with the mode
        if i % 1_001 == 9:
            cells[9] = ""  # missing target: dropped
        lines.append(",".join(cells))
        if i % 53 == 0:
            lines.append(lines[-1])  # a duplicate
    # Text in a number column, late in the file: the typed read of that piece fails on a
    # node and the whole source is read again as text (as a local ingest does).
    for at in (30_000, 35_500):
        lines[at] = lines[at].replace(lines[at].split(",")[2], "n/a?", 1)
    path = tmp_path_factory.mktemp("ray-ingest-src") / "cancer.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, cluster: local.LocalCluster
             ) -> Settings:
    root = tmp_path_factory.mktemp("ray-ingest-home")
    # Small batches: the 4 MB file is cut into 1 MB pieces, several per node.
    doc = {"home": str(root / "home"), "cluster": {"address": cluster.address},
           "data": {"batch_rows": 1_000}, "log_level": "WARNING"}
    (root / "stratum.yaml").write_text(yaml.safe_dump(doc))
    return load_settings(root / "stratum.yaml")


def _cli(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(app, ["--config", str(settings.home.parent / "stratum.yaml"),
                                      *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return json.loads(result.stdout)


def _shards(store: Store, shard_map: dict[str, Any]) -> list[bytes]:
    return [store.artifacts.get_bytes(f["paths"][0]) for f in shard_map["files"]]


def test_ray_ingest_gives_the_local_version(settings: Settings, source: Path,
                                            cluster: local.LocalCluster) -> None:
    common = ["data", "ingest", str(source), "--shards", "4", "--replicas", "1", "--json"]
    here = _cli(settings, *common, "--name", "here", "--backend", "local")
    there = _cli(settings, *common, "--name", "there", "--backend", "ray")
    assert (here["backend"], there["backend"]) == ("local", "ray")
    assert here["created"] and there["created"]
    assert there["version"] == here["version"]
    assert there["cleaning"] == here["cleaning"]
    clean = here["cleaning"]
    assert clean["type_errors"] == {"perimeter": 2} and clean["missing_target"] >= 40
    assert clean["duplicates"] >= ROWS // 53 and set(clean["imputed"]) == {"texture", "size"}
    assert here["rows"] == there["rows"] == clean["rows_kept"]
    store = Store.open(settings)
    try:
        a = store.meta.dataset_version("here", here["version"])
        b = store.meta.dataset_version("there", there["version"])
        assert b.stats == a.stats and b.schema == a.schema
        assert [f["sha256"] for f in b.shard_map["files"]] == [
            f["sha256"] for f in a.shard_map["files"]]
        assert _shards(store, b.shard_map) == _shards(store, a.shard_map)
        assert b.extra["pipeline"] == a.extra["pipeline"]
        # Through the API: the units were prepared on both nodes, and the same content
        # under the first name is the version already there.
        preparer = RayPreparer(settings)
        again = ingest(str(source), "here", store, shards=4, replicas=1, batch_rows=1_000,
                       preparer=preparer)
        assert not again.created and again.version.version == here["version"]
        assert preparer.nodes == {n.ip for n in cluster.nodes}
    finally:
        store.close()


def test_an_unreachable_cluster_is_one_error_and_nothing_is_recorded(
        settings: Settings, source: Path) -> None:
    far = settings.model_copy(update={"cluster": settings.cluster.model_copy(
        update={"address": f"127.0.0.1:{free_port()}", "connect_timeout_s": 2.0})})
    store = Store.open(far)
    try:
        with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1"):
            ingest(str(source), "nowhere", store, preparer=RayPreparer(far))
        with pytest.raises(StratumError, match="does not exist"):
            store.meta.dataset_version("nowhere", "latest")
        staging = store.artifacts.staging_dir()
        assert not list(staging.glob(".shard-*"))  # no staged shard left behind
    finally:
        store.close()


def test_a_malformed_line_read_on_a_node_is_the_local_error(settings: Settings,
                                                            tmp_path: Path) -> None:
    rows = [f"{i % 7}.5,{i % 11},{'xy'[i % 2]}" for i in range(150_000)]
    rows[140_000] = "3,4"  # in the second 1 MB piece: parsed on a node, not here
    path = tmp_path / "mal.csv"
    path.write_text("a,b,t\n" + "\n".join(rows) + "\n")
    store = Store.open(settings)
    try:
        with pytest.raises(DataError) as here:
            ingest(str(path), "mal", store, batch_rows=1_000)
        with pytest.raises(DataError) as there:
            ingest(str(path), "mal", store, batch_rows=1_000, preparer=RayPreparer(settings))
        assert str(there.value) == str(here.value)
        assert "line 140002: malformed CSV: expected 3 columns, got 2" in str(there.value)
        with pytest.raises(StratumError, match="does not exist"):
            store.meta.dataset_version("mal", "latest")
    finally:
        store.close()
