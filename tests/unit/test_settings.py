from pathlib import Path

import pytest

from stratum.config import load_settings
from stratum.errors import ConfigError


def test_defaults_hang_off_home(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "h")
    assert s.metadata_url == f"sqlite:///{(tmp_path / 'h' / 'stratum.db').resolve()}"
    assert s.artifact_url == str((tmp_path / "h" / "artifacts").resolve())
    assert s.queue_url is not None and s.queue_url.endswith("queue.db")


def test_precedence_cli_over_env_over_yaml_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text("serve:\n  max_batch_size: 3\n  max_wait_ms: 9\ngateway:\n  port: 9001\n")
    monkeypatch.delenv("STRATUM_SETTINGS_JSON", raising=False)
    monkeypatch.setenv("STRATUM_SERVE__MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("STRATUM_GATEWAY__PORT", "9002")
    s = load_settings(cfg, gateway={"port": 9003})
    assert s.serve.max_batch_size == 7  # env beats YAML
    assert s.serve.max_wait_ms == 9  # YAML beats default
    assert s.gateway.port == 9003  # CLI beats env
    assert s.serve.port == 8100  # default


def test_unset_cli_flags_do_not_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "envhome"))
    assert load_settings(home=None).home == tmp_path / "envhome"


def test_bad_yaml_and_values_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("serve: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("serve:\n  max_batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"serve\.max_batch_size"):
        load_settings(wrong)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("no_such_setting: 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_child_env_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = load_settings(home=tmp_path, serve={"max_batch_size": 5})
    monkeypatch.setenv("STRATUM_SETTINGS_JSON", parent.child_env()["STRATUM_SETTINGS_JSON"])
    assert load_settings() == parent
