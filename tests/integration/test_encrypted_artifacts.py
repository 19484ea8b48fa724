"""Encryption at rest end to end: a home that starts plaintext, a key made with the CLI, a
model trained and registered with the key on and loaded back, `stratum artifacts encrypt`
rewriting what was there before, and a clear refusal without the key."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stratum.config import load_settings
from stratum.data import ingest, open_dataset
from stratum.data.preprocessing import Pipeline
from stratum.errors import ConfigError
from stratum.models import build_model
from stratum.security.encryption import MAGIC
from stratum.store import Store, load_model
from stratum.store.artifacts import SIDECAR
from stratum.train import fit, parse_config
from tests.integration.train_helpers import example

pytestmark = pytest.mark.integration
STRATUM = str(Path(sys.executable).with_name("stratum"))


def cli(home: Path, *args: str, key: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUM_")}
    if key is not None:
        env["STRATUM_ARTIFACT_KEY_FILES"] = str(key)
    return subprocess.run([STRATUM, "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def stored(root: Path, under: str) -> dict[str, bytes]:
    """Every object's bytes as they lie on disk (sidecars left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in (root / under).rglob("*")
            if p.is_file() and not p.name.endswith(SIDECAR)}


def accuracy(store: Store, version: int) -> float:
    loaded = load_model(store.meta, store.artifacts, "iris", version)
    spec = loaded.spec
    assert loaded.preprocessing is not None
    pipe = Pipeline.from_artifacts(*loaded.preprocessing)
    net = build_model(spec.architecture, spec.input_shape, len(spec.classes or []),
                      **spec.params)
    net.load_state_dict(loaded.torch_state_dict())
    ds = open_dataset(store, "iris")
    table = ds.load_table("test")
    x = pipe.transform({f: table[f].to_numpy() for f in spec.feature_names or []})
    _, y = ds.load("test")
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def test_encryption_on_a_live_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    plain = load_settings(home=home)
    root = Path(str(plain.artifact_url))
    store = Store.open(plain)
    ingest("builtin:iris", "iris", store)  # before encryption was turned on
    store.close()
    before = stored(root, "datasets")
    assert all(b.startswith(b"PAR1") for p, b in before.items() if p.endswith(".parquet"))

    key = tmp_path / "keys" / "artifacts.key"
    made = cli(home, "artifacts", "keygen", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "STRATUM_ARTIFACT_KEY_FILES" in made.stdout

    keyed = load_settings(home=home, artifact_key_files=[key])
    store = Store.open(keyed)
    assert store.artifacts.keys is not None
    key_id = store.artifacts.keys.primary.key_id
    assert key_id in made.stdout
    try:
        # trained on the plaintext shards, registered (and checkpointed) sealed
        mv = fit(parse_config(example("iris", epochs=5, checkpoint_every=10)), keyed,
                 store=store)
        assert accuracy(store, mv.version) == pytest.approx(mv.metrics["accuracy"])
        spec = store.artifacts.get_bytes(f"models/iris/{mv.version}/spec.json")
        assert b'"logistic"' in spec
        written = {**stored(root, "models"), **stored(root, "runs")}
        assert any(p.endswith("weights.safetensors") for p in written)
        assert any("checkpoints" in p for p in written)
        for path, data in written.items():
            assert data.startswith(MAGIC) and b"logistic" not in data, path
    finally:
        store.close()

    out = cli(home, "artifacts", "encrypt", "--json", key=key)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["key_id"] == key_id and doc["failed"] == []
    assert doc["rewritten"] == len(before) and doc["already_encrypted"] == len(written)
    assert all(b.startswith(MAGIC) for b in stored(root, "").values())

    store = Store.open(keyed)
    try:
        assert accuracy(store, mv.version) == pytest.approx(mv.metrics["accuracy"])
    finally:
        store.close()
    store = Store.open(plain)  # the key taken away: refused, naming the key it needs
    try:
        with pytest.raises(ConfigError, match=f"encrypted with key {key_id}"):
            load_model(store.meta, store.artifacts, "iris", mv.version)
    finally:
        store.close()
