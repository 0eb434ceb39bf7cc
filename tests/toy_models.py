"""Tiny ONNX models built in memory for unit tests (no training framework needed)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phiserve.repository.manifest import Manifest
from phiserve.repository.publish import signature_of


def doubler_bytes(width: int = 4, batch: bool = True) -> bytes:
    """``y = 2 * x`` for x FP32 [N, width] (or [1, width] without a batch axis)."""
    n = "N" if batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, width])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "doubler", [x], [y], [two]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def manifest_for(onnx_bytes: bytes, name: str = "toy", version: int = 1) -> Manifest:
    """A manifest as the repository would write it (unsigned; runtime tests need no crypto)."""
    inputs, outputs, batchable = signature_of(onnx_bytes)
    onnx.checker.check_model(onnx.load_model_from_string(onnx_bytes))
    return Manifest(
        name=name,
        version=version,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=64 if batchable else 0,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        size_bytes=len(onnx_bytes),
        created="2026-01-01T00:00:00Z",
        parity={"passed": True},
        metrics={},
        card={},
        encryption={},
    )
