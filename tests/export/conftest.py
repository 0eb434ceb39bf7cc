"""Fixtures: each example model exported once, inside a sandbox that records every file written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from phiserve.export import ExportedModel, load_export
from tests.export.helpers import MODEL_NAMES, MODELS_DIR, files_under, run_in_sandbox


@dataclass(frozen=True)
class SandboxRun:
    """What exporting every example model left behind."""

    exports: dict[str, ExportedModel]
    created: list[Path]  # every path created under the sandbox (cwd, temp dir, home)
    models_changed: list[Path]  # files added or modified under models/


@pytest.fixture(scope="session")
def sandbox_run(tmp_path_factory: pytest.TempPathFactory) -> SandboxRun:
    """Export each model once with cwd, the temp dir and HOME pointed into an empty sandbox."""
    models_before = files_under(MODELS_DIR)
    exports, created = run_in_sandbox(
        lambda: {name: load_export(MODELS_DIR / name / "export.py")() for name in MODEL_NAMES},
        tmp_path_factory.mktemp("export-sandbox"),
    )
    models_after = files_under(MODELS_DIR)
    return SandboxRun(
        exports=exports,
        created=created,
        models_changed=sorted(p for p, t in models_after.items() if models_before.get(p) != t),
    )


@pytest.fixture(scope="session")
def exports(sandbox_run: SandboxRun) -> dict[str, ExportedModel]:
    """Every example model's ExportedModel, by name."""
    return sandbox_run.exports


@pytest.fixture(scope="session")
def breast_cancer(exports: dict[str, ExportedModel]) -> ExportedModel:
    """The breast-cancer export."""
    return exports["breast-cancer"]


@pytest.fixture(scope="session")
def chest_xray(exports: dict[str, ExportedModel]) -> ExportedModel:
    """The chest-xray export."""
    return exports["chest-xray"]
