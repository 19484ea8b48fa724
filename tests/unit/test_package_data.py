"""The wheel carries every file the servers hand a browser: the dashboard's static files and
the control plane's Swagger UI (``/docs``). Nothing is fetched from a CDN at run time, so a
file left out of ``[tool.setuptools.package-data]`` would be a broken page on every
installed copy but this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

from stratum.control import apidocs
from stratum.web.site import STATIC as DASHBOARD_STATIC

ROOT = Path(__file__).resolve().parents[2]


def _setuptools_here() -> bool:
    """Whether this environment's setuptools can build the project without fetching one
    (pyproject's build-system wants setuptools>=69)."""
    try:
        return int(version("setuptools").split(".")[0]) >= 69
    except Exception:
        return False


def test_the_wheel_ships_the_browser_assets(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the code
    shutil.copytree(ROOT / "stratum", src / "stratum",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    isolation = ["--no-build-isolation"] if _setuptools_here() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--disable-pip-version-check", *isolation, str(src), "-w",
                    str(tmp_path / "dist")], check=True, timeout=240)
    wheel = next((tmp_path / "dist").glob("stratum-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "stratum"
    for folder in (apidocs.STATIC, DASHBOARD_STATIC):
        files = [f for f in folder.iterdir() if f.is_file()]
        assert files, folder
        for f in files:
            assert f"stratum/{f.relative_to(package).as_posix()}" in names, f
    served = {apidocs.JS, apidocs.CSS, apidocs.ICON}
    assert served <= {f.name for f in apidocs.STATIC.iterdir()}
