"""Tiny ONNX models built in memory for unit tests (no training framework needed)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phiserve.export import ExportedModel, build_card
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


def exported_doubler(name: str = "toy", width: int = 4) -> ExportedModel:
    """The doubler as an export script would hand it to the repository (parity passed)."""
    onnx_bytes = doubler_bytes(width)
    card = build_card(
        name=name,
        overview="Doubles its input: a toy for tests.",
        owners=[{"name": "tests", "contact": "tests@example.invalid"}],
        licence="Apache-2.0",
        references=[],
        architecture="one Mul node",
        training_data="none",
        evaluation_data="none",
        input_format="x: FP32 [N, width]",
        output_format="y: FP32 [N, width]",
        onnx_bytes=onnx_bytes,
        intended_use="tests only",
        users=["tests"],
        use_cases=["tests"],
        limitations=["not a model"],
        risks={"none": "none"},
    )
    return ExportedModel(
        name=name, onnx_bytes=onnx_bytes, parity={"passed": True}, metrics={}, card=card
    )
