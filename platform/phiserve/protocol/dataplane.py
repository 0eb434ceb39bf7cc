"""The transport-neutral data plane: model registry, metadata, readiness and inference.

HTTP routing stays thin on top of this (see :mod:`phiserve.protocol.http`); everything the
Open Inference Protocol means lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from phiserve import __version__, telemetry
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.errors import (
    BadRequest,
    ConfigurationError,
    DeadlineExceeded,
    NotFound,
    NotReady,
    PhiserveError,
)
from phiserve.protocol.codecs import InferenceRequest, encode_response
from phiserve.repository.manifest import Manifest, TensorSpec
from phiserve.repository.policy import default_version
from phiserve.repository.store import ModelRepository
from phiserve.runtime.batching import Batcher, Timings
from phiserve.runtime.onnx import OnnxModel

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data"]


@dataclass(slots=True)
class LoadedVersion:
    """A servable model version."""

    manifest: Manifest
    model: OnnxModel
    batcher: Batcher
    load_seconds: float


@dataclass(slots=True)
class InferResult:
    """An encoded response plus the PHI-free facts telemetry and audit need."""

    body: bytes
    header_length: int | None
    model: str
    version: int
    timings: Timings
    provider: str


class DataPlane:
    """Holds every loaded model version and answers V2 calls about them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.repository = ModelRepository(settings.repository_dir)
        self.loaded: dict[str, dict[int, LoadedVersion]] = {}
        # (model, version) -> PHI-free cause, for versions that could not be loaded.
        self.failures: dict[tuple[str, int], str] = {}
        self.defaults: dict[str, int] = {}
        self.model_names: frozenset[str] = frozenset()
        self.draining = False
        # Dependencies that must work for us to be ready (name -> healthy?), e.g. the audit sink.
        self.health_checks: dict[str, Callable[[], bool]] = {}
        self._retry_task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every version (off the event loop); keep retrying failures in the background."""
        await asyncio.to_thread(self._load_all)
        self.start_batchers()
        if self.failures:
            self._retry_task = asyncio.get_running_loop().create_task(self._retry_failures())

    def _load_all(self) -> None:
        """Load every version not loaded yet. Runs on a worker thread: it builds new tables and
        swaps them in at the end, so request handlers always see a consistent snapshot."""
        loaded = {name: dict(versions) for name, versions in self.loaded.items()}
        failures: dict[tuple[str, int], str] = {}
        entries = list(self.repository.entries())
        if not entries:
            failures[("*", 0)] = f"model repository {self.repository.root} holds no models"
        else:
            self._load_entries(entries, loaded, failures)
        defaults = {}
        for name, versions in loaded.items():
            all_versions = sorted({*versions, *(v for (m, v) in failures if m == name)})
            try:
                defaults[name] = default_version(name, all_versions, self.settings.pinned_versions)
            except ConfigurationError as exc:
                failures[(name, self.settings.pinned_versions[name])] = exc.message
        for cause in failures.values():
            log.error("%s", cause)
        self.loaded, self.failures, self.defaults = loaded, failures, defaults
        self.model_names = frozenset(loaded) | {m for (m, _) in failures}

    def _load_entries(
        self,
        entries: list[tuple[str, int]],
        loaded: dict[str, dict[int, LoadedVersion]],
        failures: dict[tuple[str, int], str],
    ) -> None:
        try:
            provider = key_provider_from_settings(self.settings)
        except PhiserveError as exc:
            failures.update(dict.fromkeys(entries, f"key provider unavailable: {exc.message}"))
            return
        for name, version in entries:
            if version in loaded.get(name, {}):
                continue
            started = time.perf_counter()
            try:
                artifact = self.repository.load(name, version, provider, check_digest=False)
                model = OnnxModel(
                    artifact.manifest,
                    artifact.onnx_bytes,
                    execution_provider=self.settings.execution_provider,
                    intra_op_threads=self.settings.intra_op_threads,
                )
                model.warm_up()
            except PhiserveError as exc:
                failures[(name, version)] = exc.message
                telemetry.set_model_ready(name, version, False)
                continue
            seconds = time.perf_counter() - started
            loaded.setdefault(name, {})[version] = LoadedVersion(
                artifact.manifest, model, Batcher(model, self.settings.batching_for(name)), seconds
            )
            telemetry.model_loaded(name, version, seconds)

    def start_batchers(self) -> None:
        """Start the batching loop of each newly loaded version (on the event loop)."""
        for versions in self.loaded.values():
            for lv in versions.values():
                lv.batcher.start()

    async def _retry_failures(self) -> None:
        delay = 1.0
        while self.failures:
            await asyncio.sleep(delay)
            await asyncio.to_thread(self._load_all)
            self.start_batchers()
            delay = min(delay * 2, 30.0)
        log.info("all model versions loaded")

    async def stop(self) -> None:
        """Finish queued requests and release the batchers."""
        self.draining = True
        if self._retry_task:
            self._retry_task.cancel()
        for versions in self.loaded.values():
            for lv in versions.values():
                await lv.batcher.stop()

    # --- health and metadata ---------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        """Body of /v2/health/ready: ready when every version is loaded, every dependency works
        and we are not draining. The reasons are names and causes, never data."""
        unhealthy = sorted(name for name, check in self.health_checks.items() if not check())
        ready = bool(self.loaded) and not self.failures and not unhealthy and not self.draining
        body: dict[str, Any] = {"ready": ready}
        if self.draining:
            body["reason"] = "draining"
        if unhealthy:
            body["unavailable"] = unhealthy
        if self.failures:
            body["failures"] = [
                {"model": m, "version": v, "cause": c}
                for (m, v), c in sorted(self.failures.items())
            ]
        return body

    def known_models(self) -> frozenset[str]:
        """Names of the models in the repository, loaded or not (computed once per load)."""
        return self.model_names

    def server_metadata(self) -> dict[str, Any]:
        """GET /v2."""
        return {"name": "phiserve", "version": __version__, "extensions": EXTENSIONS}

    def resolve(self, name: str | None, version: int | None, bad_version: bool) -> LoadedVersion:
        """The loaded version a route names, or the policy's default; typed errors otherwise."""
        if name not in self.loaded:
            if any(m == name for (m, _) in self.failures):
                raise NotReady(f"model {name!r} is not ready")
            # The name is not echoed: a made-up path segment may be anything, PHI included.
            raise NotFound("unknown model")
        if bad_version:
            raise NotFound(f"model {name!r}: versions are positive integers")
        version = version or self.defaults[name]
        lv = self.loaded[name].get(version)
        if lv is None:
            if (name, version) in self.failures:
                raise NotReady(
                    f"model {name!r} version {version} is not ready: {self.failures[(name, version)]}"
                )
            raise NotFound(f"model {name!r} has no version {version}")
        return lv

    def model_metadata(self, lv: LoadedVersion) -> dict[str, Any]:
        """GET /v2/models/{m}[/versions/{v}]."""
        m = lv.manifest
        return {
            "name": m.name,
            "versions": [str(v) for v in sorted(self.loaded[m.name])],
            "platform": m.platform,
            "inputs": [spec.model_dump() for spec in m.inputs],
            "outputs": [spec.model_dump() for spec in m.outputs],
            "parameters": {
                "version": m.version,
                "default_version": self.defaults[m.name],
                "max_batch_size": lv.batcher.max_batch_size,
                "sha256": m.sha256,
                "execution_provider": lv.model.provider,
            },
        }

    # --- inference -------------------------------------------------------------------------
    async def infer(self, lv: LoadedVersion, request: InferenceRequest) -> InferResult:
        """Validate against the signature, batch, run and encode.

        Draining does not refuse work: requests that reached us still finish (only readiness
        drops, so the load balancer stops sending more).
        """
        feeds = _check_inputs(lv, request)
        try:
            outputs, timings = await asyncio.wait_for(
                lv.batcher.submit(feeds), self.settings.request_timeout_s
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"model {lv.manifest.name!r}: no result within {self.settings.request_timeout_s} s"
            ) from None
        telemetry.record_inference(
            lv.manifest.name, lv.manifest.version, timings, lv.model.provider
        )
        selected = _select_outputs(lv.manifest, request, outputs)
        with telemetry.child_span(telemetry.SPAN_ENCODE):
            body, header_length = encode_response(
                lv.manifest.name, str(lv.manifest.version), request.id, selected
            )
        return InferResult(
            body, header_length, lv.manifest.name, lv.manifest.version, timings, lv.model.provider
        )


def _check_inputs(lv: LoadedVersion, request: InferenceRequest) -> dict[str, np.ndarray]:
    """Match the request to the signature: names, datatypes, ranks, fixed dims, batch size."""
    m = lv.manifest
    specs: dict[str, TensorSpec] = {spec.name: spec for spec in m.inputs}
    given = {inp.name for inp in request.inputs}
    if missing := sorted(specs.keys() - given):
        raise BadRequest(f"model {m.name!r}: missing inputs {missing}")
    if unknown := sorted(given - specs.keys()):
        raise BadRequest(f"model {m.name!r}: unknown inputs {[u[:64] for u in unknown[:5]]}")
    feeds: dict[str, np.ndarray] = {}
    for inp in request.inputs:
        spec = specs[inp.name]
        if inp.datatype != spec.datatype:
            raise BadRequest(
                f"input {inp.name!r}: datatype {inp.datatype} does not match "
                f"the model's {spec.datatype}"
            )
        if len(inp.shape) != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, inp.shape, strict=True)
        ):
            raise BadRequest(
                f"input {inp.name!r}: shape {inp.shape} does not match the model's {spec.shape}"
            )
        feeds[inp.name] = inp.array
    if m.max_batch_size:
        # A batch larger than max_batch_size still runs, alone, as Triton's batcher would not.
        rows = {inp.shape[0] for inp in request.inputs}
        if len(rows) > 1:
            raise BadRequest(f"model {m.name!r}: inputs disagree on the batch size")
        if 0 in rows:
            raise BadRequest(f"model {m.name!r}: empty batch")
    return feeds


def _select_outputs(
    manifest: Manifest, request: InferenceRequest, outputs: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray, bool]]:
    if request.outputs is None:
        return [(name, value, request.binary_output) for name, value in outputs.items()]
    selected = []
    for wanted in request.outputs:
        if wanted.name not in outputs:
            raise BadRequest(f"model {manifest.name!r} has no output {wanted.name[:64]!r}")
        selected.append((wanted.name, outputs[wanted.name], wanted.binary))
    return selected
