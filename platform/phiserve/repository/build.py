"""Run the export scripts under ``models/`` and publish their results to the repository."""

from __future__ import annotations

from pathlib import Path

from phiserve.crypto.base import KeyProvider
from phiserve.errors import ConfigurationError
from phiserve.export import ExportedModel, load_export
from phiserve.repository.manifest import Manifest
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository


def export_scripts(source: Path) -> dict[str, Path]:
    """``models/<name>/export.py`` files by model folder name."""
    scripts = {p.parent.name: p for p in sorted(source.glob("*/export.py"))}
    if not scripts:
        raise ConfigurationError(f"no export scripts found under {source}/<model>/export.py")
    return scripts


def run_export(script: Path, seed: int = 0) -> ExportedModel:
    """Run one export script; the ONNX bytes it returns stay in memory."""
    exported = load_export(script)(seed=seed)
    if not isinstance(exported, ExportedModel):
        raise ConfigurationError(f"{script}: export() must return phiserve.export.ExportedModel")
    return exported


def build_models(
    repository: ModelRepository,
    provider: KeyProvider,
    source: Path,
    names: list[str] | None = None,
    *,
    only_missing: bool = False,
) -> list[Manifest]:
    """Export and publish each selected model as a new version (or only where none exists)."""
    scripts = export_scripts(source)
    unknown = sorted(set(names or ()) - scripts.keys())
    if unknown:
        raise ConfigurationError(f"no export script for {unknown}; have {sorted(scripts)}")
    published = []
    for name, script in scripts.items():
        if names and name not in names:
            continue
        if only_missing and repository.versions(name):
            continue
        published.append(publish(repository, run_export(script), provider))
    return published
