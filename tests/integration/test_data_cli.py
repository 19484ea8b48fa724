"""`stratum data` through the real CLI, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
STRATUM = str(Path(sys.executable).with_name("stratum"))


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STRATUM, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_ingest_list_show_and_reingest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = cli(home, "data", "ingest", "builtin:iris", "--name", "iris", "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["created"] and doc["rows"] == 149 and doc["cleaning"]["duplicates"] == 1
    assert (doc["shards"], doc["replicas"]) == (8, 2)  # defaults from settings.data
    again = cli(home, "data", "ingest", "builtin:iris", "--name", "iris")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert "duplicates removed: 1" in again.stdout
    csv = tmp_path / "plants.csv"
    csv.write_text("height,kind\n" + "".join(f"{i % 17},{'ab'[i % 2]}\n" for i in range(60)))
    made = cli(home, "data", "ingest", str(csv), "--name", "plants", "--shards", "3",
               "--replicas", "1", "--shard-key", "height", "--json")
    assert made.returncode == 0, made.stderr
    listing = json.loads(cli(home, "data", "list", "--json").stdout)
    assert {(d["name"], d["versions"]) for d in listing} == {("iris", 1), ("plants", 1)}
    show = json.loads(cli(home, "data", "show", f"iris@{doc['version'][:10]}", "--json").stdout)
    assert show["version"] == doc["version"] and show["input_shape"] == [4]
    assert len(show["shard_map"]["files"]) == 8 and show["stats"]["rows"] == 149
    assert show["schema"]["classes"] == ["setosa", "versicolor", "virginica"]
    text = cli(home, "data", "show", "plants")
    assert text.returncode == 0 and "Shard map" in text.stdout and "Cleaning report" in text.stdout


def test_bad_inputs_exit_1_with_a_message_and_no_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "mal.csv").write_text("a,b,t\n1,2,x\n3,4\n")
    (tmp_path / "latin.csv").write_bytes("a,b,t\n1,2,caf\xe9\n".encode("latin-1"))
    (tmp_path / "ok.csv").write_text("a,b,t\n1,2,x\n3,4,y\n")
    (tmp_path / "schema.yaml").write_text("target: label\nfeatures: [{name: a}]\n")
    cases = [
        (["mal.csv"], "line 3: malformed CSV"),
        (["latin.csv"], "not valid UTF-8"),
        (["builtin:nope"], "unknown built-in dataset"),
        ([f"sql:sqlite:///{tmp_path}/db.sqlite::SELEC nothing"], "SQL query failed"),
        (["ok.csv", "--schema", str(tmp_path / "schema.yaml")], "['label'] not found"),
    ]
    for args, message in cases:
        src = args[0] if ":" in args[0] else str(tmp_path / args[0])
        res = cli(home, "data", "ingest", src, *args[1:], "--name", "bad")
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        flat = " ".join(res.stderr.split())
        assert "error:" in flat and message in flat, (args, res.stderr)
        assert "Traceback" not in res.stderr
    # Each CLI start costs seconds (torch import), so the empty-file and missing-file cases
    # live in tests/unit/test_data_ingest.py; here: no version was recorded by any of them.
    missing = cli(home, "data", "show", "bad")
    assert missing.returncode == 1 and "dataset 'bad' does not exist" in missing.stderr
