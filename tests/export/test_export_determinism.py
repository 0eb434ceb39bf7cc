"""Exports are deterministic: the same seed gives byte-identical ONNX, in-process and fresh."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from phiserve.export import ExportedModel, load_export
from tests.export.helpers import MODEL_NAMES, MODELS_DIR

# Exports every model twice in one fresh interpreter, printing the digest of each run and of its
# metrics and card: a fresh process has another hash seed and no warm caches (the build CLI's
# case), and the second run catches state that leaks between exports in one process.
SCRIPT = """
import hashlib, json, pathlib, sys
from phiserve.export import load_export

def sha(data):
    return hashlib.sha256(data).hexdigest()

out = {}
for name in sys.argv[2:]:
    export = load_export(pathlib.Path(sys.argv[1]) / name / "export.py")
    runs = [export(seed=0) for _ in range(2)]
    out[name] = [sha(e.onnx_bytes) for e in runs] + [
        sha(json.dumps([e.metrics, e.card], sort_keys=True).encode()) for e in runs
    ]
print(json.dumps(out))
"""


def fingerprint(e: ExportedModel) -> list[str]:
    onnx_sha = hashlib.sha256(e.onnx_bytes).hexdigest()
    doc_sha = hashlib.sha256(json.dumps([e.metrics, e.card], sort_keys=True).encode()).hexdigest()
    return [onnx_sha, onnx_sha, doc_sha, doc_sha]


def test_same_seed_same_digest_twice_in_a_fresh_process(
    exports: dict[str, ExportedModel], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(MODELS_DIR), *MODEL_NAMES],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=280,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    fresh = json.loads(result.stdout.strip().splitlines()[-1])
    assert fresh == {name: fingerprint(e) for name, e in exports.items()}


def test_another_seed_gives_another_model(breast_cancer: ExportedModel) -> None:
    other = load_export(MODELS_DIR / "breast-cancer" / "export.py")(seed=1)
    assert (
        hashlib.sha256(other.onnx_bytes).digest()
        != hashlib.sha256(breast_cancer.onnx_bytes).digest()
    )
