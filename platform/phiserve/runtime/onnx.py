"""The onnxruntime runtime: a :class:`~phiserve.model.Model` whose session is built from bytes.

The session lives only in memory (onnxruntime loads from the decrypted bytes; nothing plaintext
touches disk), on the configured execution provider, behind a dynamic batcher.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort

from phiserve import telemetry
from phiserve.config import BatchingSettings, ExecutionProvider
from phiserve.errors import ConfigurationError, ModelLoadError, NotReady
from phiserve.model import Model, ModelHook, Prediction
from phiserve.model.datatypes import V2_TO_NUMPY
from phiserve.repository.manifest import Manifest
from phiserve.runtime.batching import Batcher

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: ExecutionProvider) -> list[str]:
    """Execution providers to ask for, most preferred first."""
    available = ort.get_available_providers()
    if requested == "cuda":
        if CUDA not in available:
            raise ConfigurationError(
                "execution_provider 'cuda' requested but this onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu, not onnxruntime)"
            )
        return [CUDA, CPU]
    if requested == "auto" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class OnnxSession:
    """One model version in an onnxruntime session; ``run`` is thread-safe."""

    def __init__(
        self,
        manifest: Manifest,
        onnx_bytes: bytes,
        *,
        execution_provider: ExecutionProvider = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        self.manifest = manifest
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        # Spinning worker threads steal the cores the event loop needs between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        wanted = choose_providers(execution_provider)
        try:
            self.session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(
                f"model {manifest.name!r} version {manifest.version}: onnxruntime refused the "
                f"model ({type(exc).__name__})"
            ) from None
        # A silent fall-back to CPU must be visible: say what the session really uses.
        self.provider = self.session.get_providers()[0]
        if wanted[0] == CUDA and self.provider != CUDA:
            if execution_provider == "cuda":
                raise ModelLoadError(
                    f"model {manifest.name!r} version {manifest.version}: CUDA was requested "
                    "but the session fell back to CPU"
                )
            log.warning(
                "model %s v%s: CUDA unavailable, fell back to CPU", manifest.name, manifest.version
            )
        log.info("model %s v%s loaded on %s", manifest.name, manifest.version, self.provider)
        self.output_names = [o.name for o in manifest.outputs]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs; returns every output by name."""
        results = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, results, strict=True))

    def warm_up(self) -> None:
        """Run once on zeros so the first request does not pay for lazy initialisation."""
        feeds = {}
        for spec in self.manifest.inputs:
            shape = [1 if d < 0 else d for d in spec.shape]
            if spec.datatype == "BYTES":
                feeds[spec.name] = np.full(shape, b"", dtype=np.object_)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
        self.run(feeds)


class OnnxModel(Model):
    """An ONNX model version served by onnxruntime behind a dynamic batcher."""

    def __init__(
        self,
        manifest: Manifest,
        hooks: Sequence[ModelHook] = (),
        *,
        execution_provider: ExecutionProvider = "auto",
        intra_op_threads: int = 0,
        batching: BatchingSettings | None = None,
    ) -> None:
        super().__init__(manifest, hooks)
        self.execution_provider: ExecutionProvider = execution_provider
        self.intra_op_threads = intra_op_threads
        self.batching = batching or BatchingSettings()
        self.session: OnnxSession | None = None
        self.batcher: Batcher | None = None

    @property
    def max_batch_size(self) -> int:
        """The batcher's limit (the manifest's, lowered by settings)."""
        return self.batcher.max_batch_size if self.batcher else 1

    @property
    def device(self) -> str:
        """The execution provider the session really uses."""
        return self.session.provider if self.session else "unloaded"

    async def load(self, artifact: bytes) -> None:
        """Build and warm the session off the event loop, then start the batcher on it."""
        session = await asyncio.to_thread(self._build_session, artifact)
        m = self.manifest
        self.batcher = Batcher(
            session.run,
            name=m.name,
            version=m.version,
            model_max_batch_size=m.max_batch_size,
            settings=self.batching,
        )
        self.session = session
        self.batcher.start()
        self.ready = True

    def _build_session(self, artifact: bytes) -> OnnxSession:
        session = OnnxSession(
            self.manifest,
            artifact,
            execution_provider=self.execution_provider,
            intra_op_threads=self.intra_op_threads,
        )
        session.warm_up()
        return session

    async def unload(self) -> None:
        """Let queued requests finish, then stop the batcher."""
        self.ready = False
        if self.batcher:
            await self.batcher.stop()

    async def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Queue the inputs for the next batch; records queue wait and inference telemetry."""
        if self.batcher is None or self.session is None:
            raise NotReady(f"model {self.name!r} version {self.version} is not loaded")
        outputs, timings = await self.batcher.submit(dict(inputs))
        telemetry.record_inference(self.name, self.version, timings, self.session.provider)
        return Prediction(outputs, timings.batch_size)
