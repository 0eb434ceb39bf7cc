"""phiserve_load is an installed distribution of its own: importable from anywhere with no path
edits, and disjoint from the server's distribution."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.loadtests.conftest import BIN, LOADTESTS, REPO_ROOT, clean_env

IMPORT_ALL = """
import importlib, json, pkgutil, phiserve_load
from importlib.metadata import packages_distributions
names = [m.name for m in pkgutil.iter_modules(phiserve_load.__path__)]
for name in names:
    importlib.import_module(f"phiserve_load.{name}")
print(json.dumps({"file": phiserve_load.__file__, "modules": names,
                  "dist": packages_distributions()["phiserve_load"]}))
"""


def test_the_installed_package_imports_from_anywhere(tmp_path: Path) -> None:
    """Isolated mode (-I): no PYTHONPATH, no user site, not even the current folder on the path.

    Every module imports (locust, gevent and matplotlib included), from the sources in
    loadtests/phiserve_load, as the distribution phiserve-load."""
    proc = subprocess.run(
        [str(BIN / "python"), "-I", "-c", IMPORT_ALL],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["file"] == str(LOADTESTS / "phiserve_load" / "__init__.py")
    assert got["dist"] == ["phiserve-load"]
    sources = sorted(p.stem for p in (LOADTESTS / "phiserve_load").glob("*.py"))
    assert sorted(got["modules"]) == [s for s in sources if s != "__init__"]


@pytest.mark.slow
def test_the_two_wheels_share_nothing(tmp_path: Path) -> None:
    """The server's wheel holds no load-test code; the load-test wheel holds only its package
    (not the locustfile, the scripts or the chart beside it)."""
    proc = subprocess.run(
        [str(BIN / "pip"), "wheel", "-q", "--no-deps", "-w", str(tmp_path), ".", "./loadtests"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def tops(pattern: str) -> set[str]:
        (wheel,) = tmp_path.glob(pattern)
        with zipfile.ZipFile(wheel) as zf:
            return {n.split("/", 1)[0] for n in zf.namelist()}

    server = tops("phiserve-*.whl")
    load = tops("phiserve_load-*.whl")
    assert {t for t in server if not t.endswith(".dist-info")} == {"phiserve"}
    assert {t for t in load if not t.endswith(".dist-info")} == {"phiserve_load"}
