"""Fixtures: the real deterioration export, published to a repository, served by a data plane.

Imported by the conftest of each clinical test folder (tests/fhir, clinical, explain, deferral).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.dataplane import DataPlane
from phiserve.deferral.hook import deferral_hook
from phiserve.deferral.metrics import DeferralCounter
from phiserve.explain.hook import explanation_hook
from phiserve.export import ExportedModel
from phiserve.fhir.mapping import FhirMapping, mapping_hook
from phiserve.registry import ModelRegistry
from phiserve.repository.build import run_export
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from phiserve.runtime import runtimes

MODELS = Path(__file__).resolve().parents[2] / "models"
NAME = "deterioration"


@pytest.fixture(scope="session")
def deterioration() -> ExportedModel:
    """The deterioration export (seed 0), once per session."""
    return run_export(MODELS / NAME / "export.py")


@pytest.fixture(scope="session")
def mapping(deterioration: ExportedModel) -> FhirMapping:
    """Its validated FHIR mapping."""
    return FhirMapping.model_validate(deterioration.extensions["fhir"])


def with_extensions(exported: ExportedModel, **blocks: dict[str, Any] | None) -> ExportedModel:
    """A copy of ``exported`` whose extension blocks are replaced (None removes one)."""
    extensions = {**exported.extensions, **blocks}
    return dataclasses.replace(
        exported, extensions={k: v for k, v in extensions.items() if v is not None}
    )


@pytest.fixture
def make_plane(
    tmp_path: Path, deterioration: ExportedModel
) -> Callable[..., tuple[DataPlane, DeferralCounter]]:
    """Publish an export (the real one unless given) and build an unstarted data plane on it,
    with the production hooks and a private deferral counter."""

    def make(exported: ExportedModel = deterioration) -> tuple[DataPlane, DeferralCounter]:
        settings = Settings(home=tmp_path / exported.name, execution_provider="cpu")
        provider = key_provider_from_settings(settings, create=True)
        publish(ModelRepository(settings.repository_dir), exported, provider)
        counter = DeferralCounter()
        registry = ModelRegistry(
            ModelRepository(settings.repository_dir),
            lambda: key_provider_from_settings(settings),
            runtimes(settings),
            hooks=(
                mapping_hook,
                explanation_hook,
                lambda manifest: deferral_hook(manifest, counter),
            ),
        )
        return DataPlane(registry, request_timeout_s=10), counter

    return make


def load_failure(make_plane: Callable[..., Any], exported: ExportedModel) -> str:
    """The registry's cause for the one version of ``exported`` (it must fail)."""

    async def main() -> str:
        plane, _ = make_plane(exported)
        await plane.registry.start()
        try:
            assert plane.registry.loaded == {}
            ((_, cause),) = plane.registry.failures.items()
            return cause
        finally:
            await plane.stop()

    return asyncio.run(main())
