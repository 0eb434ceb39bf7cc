"""The model registry: loading, version policy, failures and retry, hooks per manifest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.base import KeyProvider
from phiserve.errors import KeyProviderError, NotFound, NotReady
from phiserve.model import Model, ModelHook
from phiserve.registry import ModelRegistry
from phiserve.repository.manifest import Manifest
from phiserve.repository.store import ModelRepository


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait on observable state, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def test_every_version_loads_and_the_latest_is_the_default(make_registry) -> None:
    async def main() -> None:
        registry = make_registry()
        await registry.start()
        try:
            assert registry.failures == {}
            assert registry.versions("toy") == [1, 2] and registry.versions("other") == [1]
            assert registry.names == {"toy", "other"}
            assert registry.resolve("toy", None).version == 2
            assert registry.resolve("toy", 1).version == 1
            model = registry.resolve("other", None)
            prediction = await model.predict({"x": np.ones((2, 4), np.float32)})
            np.testing.assert_array_equal(prediction.outputs["y"], np.full((2, 4), 2.0))
        finally:
            await registry.stop()

    asyncio.run(main())


def test_pinned_version_is_the_default_and_a_missing_pin_is_a_failure(make_registry) -> None:
    async def main() -> None:
        registry = make_registry(pinned={"toy": 1, "other": 7})
        await registry.start()
        try:
            assert registry.resolve("toy", None).version == 1
            assert "pinned to version 7" in registry.failures[("other", 7)]
        finally:
            await registry.stop()

    asyncio.run(main())


def test_lookups_that_fail_say_why_without_echoing_the_path(make_registry) -> None:
    async def main() -> None:
        registry = make_registry()
        await registry.start()
        try:
            with pytest.raises(NotFound) as unknown:
                registry.resolve("Jane Doe 1970-01-01", None)
            assert "Jane" not in unknown.value.message
            with pytest.raises(NotFound, match="has no version 9"):
                registry.resolve("toy", 9)
            with pytest.raises(NotFound, match="positive integers"):
                registry.resolve("toy", None, bad_version=True)
        finally:
            await registry.stop()

    asyncio.run(main())


def test_a_tampered_version_fails_alone_and_names_its_cause(
    make_registry, toy_settings: Settings
) -> None:
    artifact = toy_settings.repository_dir / "toy" / "1" / "model.onnx.enc"
    data = bytearray(artifact.read_bytes())
    data[10] ^= 0xFF
    artifact.write_bytes(bytes(data))

    async def main() -> None:
        registry = make_registry()
        await registry.start()
        try:
            assert list(registry.failures) == [("toy", 1)]
            assert "failed authentication" in registry.failures[("toy", 1)]
            assert registry.resolve("toy", None).version == 2
            with pytest.raises(NotReady, match="version 1 is not ready"):
                registry.resolve("toy", 1)
        finally:
            await registry.stop()

    asyncio.run(main())


def test_an_unavailable_key_provider_is_retried_until_it_answers(
    make_registry, toy_settings: Settings
) -> None:
    up = asyncio.Event()

    def provider() -> KeyProvider:
        if not up.is_set():
            raise KeyProviderError("KMS unreachable")
        return key_provider_from_settings(toy_settings)

    async def main() -> None:
        registry = make_registry(key_provider=provider)
        await registry.start()
        try:
            assert registry.loaded == {}
            assert set(registry.failures) == {("toy", 1), ("toy", 2), ("other", 1)}
            assert all("key provider unavailable" in c for c in registry.failures.values())
            with pytest.raises(NotReady):
                registry.resolve("toy", None)
            up.set()
            await _until(lambda: not registry.failures)
            assert registry.versions("toy") == [1, 2]
        finally:
            await registry.stop()

    asyncio.run(main())


def test_a_platform_without_runtime_is_a_failure(toy_settings: Settings) -> None:

    async def main() -> None:
        registry = ModelRegistry(
            ModelRepository(toy_settings.repository_dir),
            lambda: key_provider_from_settings(toy_settings),
            runtimes={},
        )
        await registry.start()
        try:
            assert "no runtime for platform 'onnxruntime_onnx'" in registry.failures[("toy", 1)]
        finally:
            await registry.stop()

    asyncio.run(main())


class _Tag(ModelHook):
    def __init__(self, manifest: Manifest) -> None:
        self.model = manifest.name


def test_hooks_are_attached_from_each_manifest(make_registry) -> None:
    def only_toy(manifest: Manifest) -> ModelHook | None:
        return _Tag(manifest) if manifest.name == "toy" else None

    async def main() -> None:
        registry = make_registry(hooks=(only_toy,))
        await registry.start()
        try:
            toy: Model = registry.resolve("toy", None)
            assert [type(h) for h in toy.hooks] == [_Tag] and toy.hooks[0].model == "toy"
            assert registry.resolve("other", None).hooks == ()
        finally:
            await registry.stop()

    asyncio.run(main())


def test_stop_unloads_every_version(make_registry) -> None:
    async def main() -> list[Model]:
        registry = make_registry()
        await registry.start()
        models = registry.models()
        assert all(m.ready for m in models) and len(models) == 3
        await registry.stop()
        return models

    assert not any(m.ready for m in asyncio.run(main()))


def test_an_empty_repository_is_a_failure(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key_provider_from_settings(settings, create=True)

    async def main() -> None:

        registry = ModelRegistry(
            ModelRepository(settings.repository_dir),
            lambda: key_provider_from_settings(settings),
            {},
        )
        await registry.start()
        try:
            assert "holds no models" in registry.failures[("*", 0)]
        finally:
            await registry.stop()

    asyncio.run(main())
