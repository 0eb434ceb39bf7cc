"""The model registry: which model versions are live, and how they got there.

It joins the encrypted repository (what exists), the key provider (what can be decrypted), the
runtimes (what a manifest's platform is served by), the hooks each concern attaches to a model,
and the version policy (which version answers when a request names none). Versions that fail to
load are retried in the background with a growing delay; readiness reports them with a PHI-free
cause. Tables are rebuilt off to the side and swapped in whole, so a request always sees one
consistent snapshot (Triton's repository manager, in small).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from phiserve import telemetry
from phiserve.crypto.base import KeyProvider
from phiserve.errors import ConfigurationError, NotFound, NotReady, PhiserveError
from phiserve.model import HookFactory, Model, ModelFactory, ModelHook
from phiserve.repository.manifest import Manifest
from phiserve.repository.policy import default_version
from phiserve.repository.store import ModelRepository

log = logging.getLogger(__name__)

_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0


class ModelRegistry:
    """Loads every version in the repository and resolves (model, version) to a live model."""

    def __init__(
        self,
        repository: ModelRepository,
        key_provider: Callable[[], KeyProvider],
        runtimes: Mapping[str, ModelFactory],
        *,
        pinned_versions: Mapping[str, int] | None = None,
        hooks: Sequence[HookFactory] = (),
    ) -> None:
        self.repository = repository
        self._key_provider = key_provider
        self._runtimes = dict(runtimes)
        self._pinned = dict(pinned_versions or {})
        self._hook_factories = tuple(hooks)
        self.loaded: dict[str, dict[int, Model]] = {}
        # (model, version) -> PHI-free cause, for versions that could not be loaded.
        self.failures: dict[tuple[str, int], str] = {}
        self.defaults: dict[str, int] = {}
        self.names: frozenset[str] = frozenset()
        self._retry_task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every version; keep retrying failures in the background."""
        await self._load_all()
        if self.failures:
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_failures())

    async def stop(self) -> None:
        """Stop retrying and unload every version (queued requests finish first)."""
        if self._retry_task:
            self._retry_task.cancel()
        for versions in self.loaded.values():
            for model in versions.values():
                await model.unload()

    async def _retry_failures(self) -> None:
        delay = _RETRY_FIRST_S
        while self.failures:
            await asyncio.sleep(delay)
            await self._load_all()
            delay = min(delay * 2, _RETRY_MAX_S)
        log.info("all model versions loaded")

    async def _load_all(self) -> None:
        """Load every version not loaded yet into new tables, then swap them in."""
        loaded = {name: dict(versions) for name, versions in self.loaded.items()}
        failures: dict[tuple[str, int], str] = {}
        entries = await asyncio.to_thread(lambda: list(self.repository.entries()))
        if not entries:
            failures[("*", 0)] = f"model repository {self.repository.root} holds no models"
        else:
            await self._load_entries(entries, loaded, failures)
        defaults = {}
        for name, versions in loaded.items():
            all_versions = sorted({*versions, *(v for (m, v) in failures if m == name)})
            try:
                defaults[name] = default_version(name, all_versions, self._pinned)
            except ConfigurationError as exc:
                failures[(name, self._pinned[name])] = exc.message
        for cause in failures.values():
            log.error("%s", cause)
        self.loaded, self.failures, self.defaults = loaded, failures, defaults
        self.names = frozenset(loaded) | {m for (m, _) in failures}

    async def _load_entries(
        self,
        entries: list[tuple[str, int]],
        loaded: dict[str, dict[int, Model]],
        failures: dict[tuple[str, int], str],
    ) -> None:
        try:
            provider = await asyncio.to_thread(self._key_provider)
        except PhiserveError as exc:
            failures.update(dict.fromkeys(entries, f"key provider unavailable: {exc.message}"))
            return
        for name, version in entries:
            if version in loaded.get(name, {}):
                continue
            started = time.perf_counter()
            try:
                model = await self._load_one(provider, name, version)
            except PhiserveError as exc:
                failures[(name, version)] = exc.message
                telemetry.set_model_ready(name, version, False)
                continue
            seconds = time.perf_counter() - started
            loaded.setdefault(name, {})[version] = model
            telemetry.model_loaded(name, version, seconds)

    async def _load_one(self, provider: KeyProvider, name: str, version: int) -> Model:
        # Decryption verifies the manifest, so the runtime and hooks are chosen from an
        # authenticated one.
        artifact = await asyncio.to_thread(
            self.repository.load, name, version, provider, check_digest=False
        )
        manifest = artifact.manifest
        runtime = self._runtimes.get(manifest.platform)
        if runtime is None:
            raise ConfigurationError(
                f"model {name!r} version {version}: no runtime for platform {manifest.platform!r}"
            )
        model = runtime(manifest, self._hooks_for(manifest))
        await model.load(artifact.onnx_bytes)
        return model

    def _hooks_for(self, manifest: Manifest) -> list[ModelHook]:
        hooks = (factory(manifest) for factory in self._hook_factories)
        return [hook for hook in hooks if hook is not None]

    # --- lookups ---------------------------------------------------------------------------
    def resolve(self, name: str | None, version: int | None, bad_version: bool = False) -> Model:
        """The live version a request names, or the policy's default; typed errors otherwise."""
        if name is None or name not in self.loaded:
            if any(m == name for (m, _) in self.failures):
                raise NotReady(f"model {name!r} is not ready")
            # The name is not echoed: a made-up path segment may be anything, PHI included.
            raise NotFound("unknown model")
        if bad_version:
            raise NotFound(f"model {name!r}: versions are positive integers")
        version = version or self.defaults[name]
        model = self.loaded[name].get(version)
        if model is None:
            if (name, version) in self.failures:
                raise NotReady(
                    f"model {name!r} version {version} is not ready: {self.failures[(name, version)]}"
                )
            raise NotFound(f"model {name!r} has no version {version}")
        return model

    def versions(self, name: str) -> list[int]:
        """Live versions of ``name``, ascending."""
        return sorted(self.loaded.get(name, ()))

    def models(self) -> list[Model]:
        """Every live version of every model."""
        return [model for versions in self.loaded.values() for model in versions.values()]
