"""onnxruntime sessions built from in-memory bytes, on the configured execution provider."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from phiserve.config import ExecutionProvider
from phiserve.errors import ConfigurationError, ModelLoadError
from phiserve.protocol.datatypes import V2_TO_NUMPY
from phiserve.repository.manifest import Manifest

log = logging.getLogger(__name__)

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


class OnnxModel:
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
