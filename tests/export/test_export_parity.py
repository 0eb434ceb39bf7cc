"""Parity: the real exports pass; perturbed weights, disagreeing labels and thin checks fail."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_breast_cancer

from phiserve.errors import PhiserveError
from phiserve.export import TARGET_OPSET, ExportedModel, ParityError, check_parity, run_onnx
from phiserve.export.parity import MIN_SAMPLES
from tests.export.helpers import MODEL_NAMES, model_proto

PARITY_KEYS = {"samples", "tolerance", "max_abs_diff", "label_agreement", "passed"}


def features(n: int = 120) -> np.ndarray:
    """Real breast-cancer rows (extreme synthetic rows would saturate every probability)."""
    return load_breast_cancer().data[:n].astype(np.float32)


def images(n: int = MIN_SAMPLES) -> np.ndarray:
    """Smooth random images, like the chest-xray script's parity inputs."""
    rng = np.random.default_rng(0)
    coarse = rng.random((n, 1, 7, 7), dtype=np.float32)
    return np.kron(coarse, np.ones((32, 32), np.float32))[..., :224, :224] * rng.random(
        (n, 1, 1, 1), dtype=np.float32
    )


def identity_model() -> bytes:
    """A one-node graph, y = x over float32 [N, 2] scores: the argmax-label path in isolation."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_real_exports_pass_parity(name: str, exports: dict[str, ExportedModel]) -> None:
    parity = exports[name].parity
    assert set(parity) >= PARITY_KEYS
    assert parity["passed"] is True
    assert parity["samples"] >= MIN_SAMPLES
    assert parity["label_agreement"] == 1.0
    assert parity["max_abs_diff"] <= parity["tolerance"]["atol"]
    assert parity["provider"] == "CPUExecutionProvider"


def test_chest_xray_outputs_depend_on_the_image(chest_xray: ExportedModel) -> None:
    # With PyTorch's default init every output collapsed to the head's bias, and parity then
    # compared constants. The logits must vary from image to image far beyond the tolerance.
    logits = run_onnx(chest_xray.onnx_bytes, {"image": images()})["logits"]
    assert logits.std(axis=0).min() > 100 * chest_xray.parity["tolerance"]["atol"]


def test_perturbed_breast_cancer_weights_raise(breast_cancer: ExportedModel) -> None:
    x = features()
    expected = run_onnx(breast_cancer.onnx_bytes, {"input": x})
    broken = model_proto(breast_cancer)
    linear = next(n for n in broken.graph.node if n.op_type == "LinearClassifier")
    coefficients = next(a for a in linear.attribute if a.name == "coefficients")
    coefficients.floats[0] *= 1.05  # a 5% error in one coefficient
    with pytest.raises(ParityError, match=r"'breast-cancer'.*beyond atol") as info:
        check_parity(
            "breast-cancer",
            broken.SerializeToString(),
            {"input": x},
            expected,
            atol=1e-5,
            rtol=1e-4,
        )
    assert info.value.parity["passed"] is False
    assert info.value.parity["max_abs_diff"] > 1e-5


def test_perturbed_chest_xray_weights_raise(chest_xray: ExportedModel) -> None:
    x = images()
    expected = run_onnx(chest_xray.onnx_bytes, {"image": x})
    broken = model_proto(chest_xray)
    weights = next(t for t in broken.graph.initializer if len(t.dims) == 4 and t.dims[1] > 1)
    w = numpy_helper.to_array(weights)
    noise = np.random.default_rng(0).normal(0.0, 0.01 * float(w.std()), w.shape).astype(w.dtype)
    weights.CopyFrom(numpy_helper.from_array(w + noise, weights.name))  # 1% noise, one layer
    with pytest.raises(ParityError, match="'chest-xray'"):
        check_parity(
            "chest-xray",
            broken.SerializeToString(),
            {"image": x},
            expected,
            atol=1e-5,
            rtol=1e-4,
        )


def test_integer_label_disagreement_raises(breast_cancer: ExportedModel) -> None:
    x = features()
    expected = run_onnx(breast_cancer.onnx_bytes, {"input": x})
    expected["label"] = expected["label"].copy()
    expected["label"][0] = 1 - expected["label"][0]
    with pytest.raises(ParityError, match="label agreement") as info:
        check_parity(
            "breast-cancer", breast_cancer.onnx_bytes, {"input": x}, expected, atol=1e-5, rtol=1e-4
        )
    assert info.value.parity["label_agreement"] == pytest.approx(1 - 1 / len(x))


def test_argmax_labels_compared_when_no_integer_output() -> None:
    # Near-tied scores within tolerance whose argmax flips: labels disagree, floats are close.
    x = np.tile(np.array([[0.5, 0.5000001]], np.float32), (MIN_SAMPLES, 1))
    native = x[:, ::-1].copy()
    with pytest.raises(ParityError, match=r"label agreement 0\.0000"):
        check_parity("toy", identity_model(), {"x": x}, {"y": native}, atol=1e-5, rtol=0.0)
    # A model whose rounding may legitimately flip ties states a lower bar explicitly.
    parity = check_parity(
        "toy",
        identity_model(),
        {"x": x},
        {"y": native},
        atol=1e-5,
        rtol=0.0,
        min_label_agreement=0.0,
    )
    assert parity["passed"] is True
    assert parity["label_agreement"] == 0.0


def test_too_few_samples_raise(breast_cancer: ExportedModel) -> None:
    x = features(MIN_SAMPLES - 1)
    expected = run_onnx(breast_cancer.onnx_bytes, {"input": x})
    with pytest.raises(ParityError, match="only 99 samples"):
        check_parity(
            "breast-cancer", breast_cancer.onnx_bytes, {"input": x}, expected, atol=1e-5, rtol=1e-4
        )


def test_missing_output_raises(breast_cancer: ExportedModel) -> None:
    x = features()
    with pytest.raises(ParityError, match="no output"):
        check_parity(
            "breast-cancer",
            breast_cancer.onnx_bytes,
            {"input": x},
            {"scores": np.zeros((len(x), 2))},
            atol=1e-5,
            rtol=1e-4,
        )


def test_nothing_to_compare_raises(breast_cancer: ExportedModel) -> None:
    with pytest.raises(ParityError, match="no expected outputs"):
        check_parity(
            "breast-cancer",
            breast_cancer.onnx_bytes,
            {"input": features()},
            {},
            atol=1e-5,
            rtol=1e-4,
        )


def test_shape_mismatch_raises(breast_cancer: ExportedModel) -> None:
    x = features()
    with pytest.raises(ParityError, match="shape"):
        check_parity(
            "breast-cancer",
            breast_cancer.onnx_bytes,
            {"input": x},
            {"probabilities": np.zeros((len(x), 3))},
            atol=1e-5,
            rtol=1e-4,
        )


def test_nan_output_fails() -> None:
    x = np.full((MIN_SAMPLES, 2), np.nan, np.float32)
    with pytest.raises(ParityError, match="beyond atol") as info:
        check_parity(
            "toy", identity_model(), {"x": x}, {"y": np.zeros_like(x)}, atol=1e-5, rtol=1e-4
        )
    assert info.value.parity["max_abs_diff"] == float("inf")


def test_silent_provider_fallback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        ort.InferenceSession, "get_providers", lambda self: ["CUDAExecutionProvider"]
    )
    with pytest.raises(ParityError, match="expected only CPUExecutionProvider"):
        run_onnx(identity_model(), {"x": np.zeros((1, 2), np.float32)})


def test_parity_error_is_a_phiserve_error() -> None:
    assert issubclass(ParityError, PhiserveError)
    err = ParityError("parity failed for 'm': x", {"passed": False})
    assert err.message == "parity failed for 'm': x"
    assert err.parity == {"passed": False}


def test_identity_model_is_valid() -> None:
    onnx.checker.check_model(onnx.load_from_string(identity_model()))
