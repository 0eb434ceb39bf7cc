"""Model runtimes: onnxruntime sessions, execution providers and dynamic batching."""

from __future__ import annotations

from collections.abc import Sequence

from phiserve.config import Settings
from phiserve.model import ModelFactory, ModelHook
from phiserve.repository.manifest import Manifest
from phiserve.runtime.onnx import PLATFORM as ONNX_PLATFORM
from phiserve.runtime.onnx import OnnxModel


def runtimes(settings: Settings) -> dict[str, ModelFactory]:
    """The runtime for each manifest ``platform``, configured from settings."""

    def onnx_model(manifest: Manifest, hooks: Sequence[ModelHook]) -> OnnxModel:
        return OnnxModel(
            manifest,
            hooks,
            execution_provider=settings.execution_provider,
            intra_op_threads=settings.intra_op_threads,
            batching=settings.batching_for(manifest.name),
        )

    return {ONNX_PLATFORM: onnx_model}
