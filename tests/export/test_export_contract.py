"""The export() contract: what every models/<name>/export.py provides, and that it writes nothing."""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

import pytest

from phiserve.errors import ConfigurationError
from phiserve.export import ExportedModel, load_export
from tests.export.conftest import SandboxRun
from tests.export.helpers import MODEL_NAMES, MODELS_DIR, parses_as_onnx, run_in_sandbox


def test_both_examples_are_present() -> None:
    assert {"breast-cancer", "chest-xray"} <= set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folder_has_script_and_readme(name: str) -> None:
    folder = MODELS_DIR / name
    assert (folder / "README.md").read_text().strip()
    export = load_export(folder / "export.py")
    param = inspect.signature(export).parameters["seed"]
    assert param.default == 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_returns_a_complete_exported_model(
    name: str, exports: dict[str, ExportedModel]
) -> None:
    exported = exports[name]
    assert isinstance(exported, ExportedModel)
    assert exported.name == name  # the folder name is the model name
    assert isinstance(exported.onnx_bytes, bytes)
    assert exported.parity["passed"] is True
    assert exported.card["model_details"]["name"] == name
    assert exported.serving["max_batch_size"] > 0
    # Everything bound for the manifest is strict JSON (no NaN, no numpy scalars).
    for part in (exported.parity, exported.metrics, exported.card, exported.serving):
        json.dumps(part, allow_nan=False)


def test_export_writes_no_files(sandbox_run: SandboxRun) -> None:
    # Importing torch's compiler stack creates its (empty) cache directory in the temp dir;
    # an empty directory holds no model bytes, so directories are allowed only when empty.
    files = [p for p in sandbox_run.created if not p.is_dir()]
    non_empty_dirs = [p for p in sandbox_run.created if p.is_dir() and any(p.iterdir())]
    assert files == []
    assert non_empty_dirs == []
    assert sandbox_run.models_changed == []  # nothing written beside the scripts either


def test_no_plaintext_onnx_anywhere_the_export_could_write(
    sandbox_run: SandboxRun, tmp_path: Path
) -> None:
    assert [p for p in sandbox_run.created if p.is_file() and parses_as_onnx(p)] == []
    assert [p for p in MODELS_DIR.rglob("*") if p.is_file() and parses_as_onnx(p)] == []


def test_sandbox_catches_a_leaky_export(breast_cancer: ExportedModel, tmp_path: Path) -> None:
    # The no-files checks above are only meaningful if the sandbox sees such writes.
    def leaky() -> None:
        Path("model.onnx").write_bytes(breast_cancer.onnx_bytes)
        with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
            f.write(breast_cancer.onnx_bytes)

    _, created = run_in_sandbox(leaky, tmp_path)
    leaked = [p for p in created if p.is_file() and parses_as_onnx(p)]
    assert [p.parent.name for p in leaked] == ["cwd", "tmp"]


def test_onnx_detector_recognises_an_onnx_file(
    breast_cancer: ExportedModel, tmp_path: Path
) -> None:
    # The scan above is only meaningful if it would spot a real model.
    (tmp_path / "leak.bin").write_bytes(breast_cancer.onnx_bytes)
    (tmp_path / "noise.bin").write_bytes(b"\x00not a model\xff" * 10)
    assert parses_as_onnx(tmp_path / "leak.bin")
    assert not parses_as_onnx(tmp_path / "noise.bin")


def test_loader_refuses_missing_script(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_export(tmp_path / "nope" / "export.py")


def test_loader_refuses_script_without_export(tmp_path: Path) -> None:
    script = tmp_path / "empty-model" / "export.py"
    script.parent.mkdir()
    script.write_text("VALUE = 1\n")
    with pytest.raises(ConfigurationError, match="no export"):
        load_export(script)
