"""Exports are deterministic: the same seed gives byte-identical ONNX, in-process and fresh."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from phiserve.export import ExportedModel, load_export

from tests.export.helpers import MODEL_NAMES, MODELS_DIR


def digest(exported: ExportedModel) -> str:
    return hashlib.sha256(exported.onnx_bytes).hexdigest()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_digest_in_process(name: str, exports: dict[str, ExportedModel]) -> None:
    again = load_export(MODELS_DIR / name / "export.py")(seed=0)
    assert digest(again) == digest(exports[name])
    assert again.metrics == exports[name].metrics  # bootstrap intervals are seeded too


def test_same_seed_same_digest_in_a_fresh_process(
    exports: dict[str, ExportedModel], tmp_path: Path
) -> None:
    # A fresh interpreter has a different hash seed and no warm caches: the build CLI's case.
    code = (
        "import hashlib, json, pathlib, sys\n"
        "from phiserve.export import load_export\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    e = load_export(pathlib.Path(sys.argv[1]) / name / 'export.py')()\n"
        "    out[name] = hashlib.sha256(e.onnx_bytes).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(MODELS_DIR), *MODEL_NAMES],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh == {name: digest(e) for name, e in exports.items()}


def test_another_seed_gives_another_model(breast_cancer: ExportedModel) -> None:
    other = load_export(MODELS_DIR / "breast-cancer" / "export.py")(seed=1)
    assert digest(other) != digest(breast_cancer)
