"""Helpers for the load-test tests: run locust as a user would, stage the chart's code.

``phiserve_load`` is installed by ``make setup`` (loadtests/pyproject.toml). Unit tests import its
modules that need neither locust nor gevent (importing locust monkey-patches the whole pytest
process); everything that does runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOADTESTS = REPO_ROOT / "loadtests"
CHART = LOADTESTS / "chart"
CHART_FILES = CHART / "files"
LOCUSTFILE = LOADTESTS / "locustfile.py"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def staged_chart() -> Path:
    """The chart with the package copied into its files/, as `make loadtest-chart` does."""
    proc = subprocess.run(
        ["bash", str(LOADTESTS / "stage-chart.sh")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return CHART


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without PHISERVE_/LOCUST_ settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHISERVE_", "LOCUST_"))}
    env.update(extra)
    return env


@dataclass
class LocustRun:
    """A finished locust process and its report directory."""

    proc: subprocess.CompletedProcess[str]
    report_dir: Path

    @property
    def code(self) -> int:
        """Exit status."""
        return self.proc.returncode

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.proc.stdout + self.proc.stderr

    def summary(self) -> dict[str, Any]:
        """summary.json of the run."""
        return json.loads((self.report_dir / "summary.json").read_text())


def run_locust(
    report_dir: Path,
    *args: str,
    host: str,
    token: str | None,
    locustfile: Path = LOCUSTFILE,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> LocustRun:
    """``locust --headless`` with the report (and locust's CSV and HTML) in ``report_dir``."""
    extra = {"PHISERVE_TOKEN": token} if token is not None else {}
    cmd = [
        str(BIN / "locust"),
        "-f",
        str(locustfile),
        "--headless",
        "--only-summary",
        "--host",
        host,
        "--report-dir",
        str(report_dir),
        "--csv",
        str(report_dir / "locust"),
        "--html",
        str(report_dir / "locust.html"),
        *args,
    ]
    proc = subprocess.run(
        cmd,
        env=clean_env(**extra, **(env or {})),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return LocustRun(proc, report_dir)


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    """A fresh report directory."""
    return tmp_path / "report"
