"""`bentoml build` packages the same service that `bentoml serve` runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.server import BIN

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_bentoml_build_packages_the_service(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PHISERVE_", "OTEL_"))},
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    result = subprocess.run(
        [str(BIN / "bentoml"), "build", "-o", "tag", str(REPO_ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (bento,) = (tmp_path / "bentoml" / "bentos" / "phiserve").glob("*/bento.yaml")
    manifest = yaml.safe_load(bento.read_text())
    assert manifest["service"] == "phiserve.service:Phiserve"
    config = manifest["services"][0]["config"]
    assert config["tracing"] == {"excluded_urls": ".*"}
    assert config["logging"]["access"]["enabled"] is False
    src = bento.parent / "src"
    assert (src / "pyproject.toml").is_file() and (src / "platform/phiserve/service.py").is_file()
    assert not list(src.rglob("__pycache__"))
    requirements = (bento.parent / "env/python/requirements.txt").read_text().splitlines()
    assert "." in requirements
