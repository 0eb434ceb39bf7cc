"""Fixtures: a repository of toy models under a local KEK, and registries built on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.base import KeyProvider
from phiserve.model import HookFactory
from phiserve.registry import ModelRegistry
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from phiserve.runtime import runtimes
from tests.toy_models import exported_doubler


@pytest.fixture
def toy_settings(tmp_path: Path) -> Settings:
    """Settings whose home holds a local KEK and a repository with toy v1, toy v2, other v1."""
    settings = Settings(home=tmp_path, execution_provider="cpu")
    provider = key_provider_from_settings(settings, create=True)
    repo = ModelRepository(settings.repository_dir)
    for name in ("toy", "toy", "other"):
        publish(repo, exported_doubler(name), provider)
    return settings


@pytest.fixture
def make_registry(toy_settings: Settings) -> Callable[..., ModelRegistry]:
    """Build a registry over the toy repository (hooks, pins and key provider adjustable)."""

    def make(
        *,
        hooks: tuple[HookFactory, ...] = (),
        pinned: dict[str, int] | None = None,
        key_provider: Callable[[], KeyProvider] | None = None,
    ) -> ModelRegistry:
        return ModelRegistry(
            ModelRepository(toy_settings.repository_dir),
            key_provider or (lambda: key_provider_from_settings(toy_settings)),
            runtimes(toy_settings),
            pinned_versions=pinned,
            hooks=hooks,
        )

    return make
