"""Helpers shared by the export tests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx
import pytest

from phiserve.export import ExportedModel

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO_ROOT / "models"
MODEL_NAMES = sorted(p.parent.name for p in MODELS_DIR.glob("*/export.py"))

T = TypeVar("T")


def files_under(root: Path) -> dict[Path, int]:
    """Every file below ``root`` with its modification time (bytecode caches left out)."""
    return {
        p: p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def parses_as_onnx(path: Path) -> bool:
    """Whether a file holds a plaintext ONNX model (a protobuf with at least one graph node)."""
    try:
        return len(onnx.load_from_string(path.read_bytes()).graph.node) > 0
    except Exception:
        return False  # not a protobuf at all


def model_proto(exported: ExportedModel) -> onnx.ModelProto:
    """The exported graph, parsed."""
    return onnx.load_from_string(exported.onnx_bytes)


def run_in_sandbox(fn: Callable[[], T], root: Path) -> tuple[T, list[Path]]:
    """Call ``fn`` with cwd, the temp dir and HOME in empty folders under ``root``.

    Returns its result and every path created in those folders, so a caller can assert that
    nothing was written (tempfile, relative paths and ~/.cache all land there).
    """
    cwd, tmp, home = root / "cwd", root / "tmp", root / "home"
    for d in (cwd, tmp, home):
        d.mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(tempfile, "tempdir", str(tmp))
        for var in ("TMPDIR", "TEMP", "TMP"):
            mp.setenv(var, str(tmp))
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        # torch records its cache dir here on import: let the context restore the old value.
        mp.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        result = fn()
    return result, sorted(p for d in (cwd, tmp, home) for p in d.rglob("*"))
