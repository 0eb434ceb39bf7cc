"""The server never imports the export toolchain; publishing commands say when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from phiserve.cli.export import export_toolchain
from phiserve.errors import ConfigurationError
from tests.server import clean_env


def test_serving_imports_neither_onnx_nor_export_code(built_home: Path) -> None:
    probe = (
        "import sys\n"
        "from phiserve.app import build_platform\n"
        "from phiserve.config import load_settings\n"
        "import phiserve.service, phiserve.cli\n"
        "build_platform(load_settings())\n"
        "loaded = sorted(m for m in sys.modules if m == 'onnx' or m.startswith(('onnx.',"
        " 'phiserve.export', 'phiserve.repository.publish', 'torch', 'sklearn')))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=clean_env(built_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_publishing_without_the_toolchain_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("onnx", "phiserve.repository.build", "phiserve.repository.publish"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of it now fails as if absent
    with pytest.raises(ConfigurationError, match=r"pip install 'phiserve\[export\]'"):
        export_toolchain()
