"""The exported graphs: names, dtypes, a dynamic batch axis, pinned opset, no ZipMap."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from phiserve.export import TARGET_OPSET, ExportedModel, run_onnx
from tests.export.helpers import MODEL_NAMES, model_proto

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
# name -> (inputs, outputs), each (tensor name, element type, shape with -1 for the batch axis)
EXPECTED = {
    "breast-cancer": (
        [("input", FLOAT, [-1, 30])],
        [("label", INT64, [-1]), ("probabilities", FLOAT, [-1, 2])],
    ),
    "chest-xray": (
        [("image", FLOAT, [-1, 1, 224, 224])],
        [("logits", FLOAT, [-1, 3])],
    ),
    "deterioration": (
        [("input", FLOAT, [-1, 14])],
        [("label", INT64, [-1]), ("probabilities", FLOAT, [-1, 2])],
    ),
}


def spec(values: list[onnx.ValueInfoProto]) -> list[tuple[str, int, list[int]]]:
    """(name, element type, shape) of graph inputs or outputs; -1 where a dim is not fixed."""
    out = []
    for v in values:
        assert v.type.HasField("tensor_type"), f"{v.name} is not a plain tensor"
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        out.append((v.name, t.elem_type, dims))
    return out


def test_every_example_has_an_expected_signature() -> None:
    assert set(MODEL_NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_signature(name: str, exports: dict[str, ExportedModel]) -> None:
    graph = model_proto(exports[name]).graph
    inputs, outputs = EXPECTED[name]
    # Initializers listed as inputs would show up as overridable model inputs.
    assert spec(list(graph.input)) == inputs
    assert spec(list(graph.output)) == outputs


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_is_valid_self_contained_and_pinned(
    name: str, exports: dict[str, ExportedModel]
) -> None:
    model = model_proto(exports[name])
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    assert opsets["ai.onnx"] == TARGET_OPSET
    # Everything embedded: the server loads from bytes, there is no directory for external data.
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external == []


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_batch_axis_is_really_dynamic(
    name: str, batch: int, exports: dict[str, ExportedModel]
) -> None:
    inputs, outputs = EXPECTED[name]
    feeds = {n: np.zeros([batch, *shape[1:]], np.float32) for n, _, shape in inputs}
    result = run_onnx(exports[name].onnx_bytes, feeds)
    assert {n: list(a.shape) for n, a in result.items()} == {
        n: [batch, *shape[1:]] for n, _, shape in outputs
    }


def test_breast_cancer_has_no_zipmap(breast_cancer: ExportedModel) -> None:
    graph = model_proto(breast_cancer).graph
    assert "ZipMap" not in {n.op_type for n in graph.node}
    probabilities = next(o for o in graph.output if o.name == "probabilities")
    assert probabilities.type.HasField("tensor_type")  # not a sequence of maps


def test_breast_cancer_probabilities_are_plain_float32(breast_cancer: ExportedModel) -> None:
    x = np.full((4, 30), 1.0, np.float32)
    result = run_onnx(breast_cancer.onnx_bytes, {"input": x})
    assert result["label"].dtype == np.int64
    assert result["probabilities"].dtype == np.float32
    np.testing.assert_allclose(result["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_chest_xray_is_a_large_payload_model(chest_xray: ExportedModel) -> None:
    # Big enough to exercise large-artifact paths, small enough to build in seconds.
    assert 1_000_000 <= len(chest_xray.onnx_bytes) <= 5_000_000
