"""Child processes start clean: ``python -P -m`` in ``/``, so a stray module in the
operator's folder is never imported; every spawn in the package goes through one helper."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from stratum.config import load_settings
from stratum.config.child import CHILD_CWD, child_environ, python_command, start_python

PACKAGE = Path(__file__).resolve().parents[2] / "stratum"


@pytest.fixture
def stray_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The operator's working directory, holding modules that shadow real ones."""
    for name in ("json", "triton", "stray_probe"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('stray {name}.py imported')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_stray_module_in_the_operators_folder_is_not_imported(stray_folder: Path) -> None:
    # The unsafe way shows the test can fail: python -m puts the folder first on sys.path.
    plain = subprocess.run([python_command("json.tool")[0], "-m", "json.tool"], input=b"{}",
                           capture_output=True, timeout=60)
    assert b"stray json.py imported" in plain.stderr
    child = start_python("json.tool", env={}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert os.readlink(f"/proc/{child.pid}/cwd") == CHILD_CWD
    out, err = child.communicate(b'{"a": 1}', timeout=60)
    assert child.returncode == 0, err
    assert out.split() == [b"{", b'"a":', b"1", b"}"]
    missing = start_python("stray_probe", env={}, stderr=subprocess.PIPE)
    _, err = missing.communicate(timeout=60)
    assert missing.returncode != 0 and b"No module named stray_probe" in err


def test_relative_pythonpath_keeps_the_meaning_it_had_where_it_was_typed(
    stray_folder: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["src", "/opt/lib", ""]))
    env = child_environ({"X": "1"})
    assert env["X"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(stray_folder / "src"), "/opt/lib", ""]


def test_children_get_an_absolute_home(stray_folder: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRATUM_SETTINGS_JSON", raising=False)
    s = load_settings(home=".stratum")
    assert s.home == stray_folder.resolve() / ".stratum"
    assert str(stray_folder.resolve()) in s.child_env()["STRATUM_SETTINGS_JSON"]


def test_every_spawn_goes_through_the_one_helper() -> None:
    """A new ``Popen([sys.executable, ...])`` would start in the operator's folder again."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "child.py" and path.parent.name == "config":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"sys\.executable|subprocess\.Popen\(|\"-m\", \"stratum", line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert not offenders, "spawn through stratum.config.child.start_python:\n" + \
        "\n".join(offenders)
