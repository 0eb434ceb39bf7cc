"""The manifest's DICOM block: validated when a version loads, checked against its signature."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.dicom import DicomHook, DicomPreprocessing, dicom_hook
from phiserve.dicom.spec import dicom_spec
from phiserve.errors import ModelLoadError
from phiserve.registry import ModelRegistry
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from tests.toy_models import doubler_bytes, exported_doubler, manifest_for

GOOD = {"input": "image", "height": 8, "width": 8}


def image_model_bytes(side: int = 8) -> bytes:
    """Mean brightness of x FP32 [N, 1, side, side] as y [N, 1]: a toy imaging model."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, side, side])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "brightness", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _manifest(block: dict[str, Any] | None, onnx_bytes: bytes | None = None) -> Any:
    manifest = manifest_for(onnx_bytes or image_model_bytes())
    return manifest.model_copy(update={"extensions": {} if block is None else {"dicom": block}})


def test_no_block_no_hook() -> None:
    assert dicom_hook(_manifest(None)) is None


def test_a_valid_block_attaches_its_preprocessing() -> None:
    hook = dicom_hook(_manifest({**GOOD, "fit": "pad", "mean": 0.5, "std": 0.2}))
    assert isinstance(hook, DicomHook)
    assert hook.spec == DicomPreprocessing(
        input="image", height=8, width=8, fit="pad", mean=0.5, std=0.2
    )
    assert hook.spec.modalities == ("CR", "DX")
    assert dicom_spec((hook,)) is hook.spec


@pytest.mark.parametrize(
    ("block", "cause"),
    [
        ({**GOOD, "height": 0}, "extensions.dicom.height: Input should be greater than or equal"),
        ({**GOOD, "modalities": ["CT"]}, "extensions.dicom.modalities.0: Input should be 'CR'"),
        ({**GOOD, "std": 0}, "extensions.dicom.std: Input should be greater than 0"),
        ({**GOOD, "mean": "nan"}, "extensions.dicom.mean:"),
        ({**GOOD, "fit": "crop"}, "extensions.dicom.fit: Input should be 'stretch' or 'pad'"),
        ({**GOOD, "window": 3}, "extensions.dicom.window: Extra inputs are not permitted"),
        ({"height": 8, "width": 8}, "extensions.dicom.input: Field required"),
        ({**GOOD, "input": "pixels"}, "extensions.dicom.input: the model has no input 'pixels'"),
        ({**GOOD, "height": 16}, "extensions.dicom: height and width give [1, 1, 16, 8]"),
    ],
)
def test_a_bad_block_names_the_field(block: dict[str, Any], cause: str) -> None:
    with pytest.raises(ModelLoadError) as refused:
        dicom_hook(_manifest(block))
    assert refused.value.message.startswith("model 'toy' version 1: ")
    assert cause in refused.value.message


def test_a_non_image_input_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="is not an FP32 \\[N, 1, H, W\\] tensor"):
        dicom_hook(_manifest({"input": "x", "height": 8, "width": 8}, doubler_bytes()))


def test_a_bad_block_fails_its_version_alone_with_the_field_as_cause(
    toy_settings: Settings, make_registry: Callable[..., ModelRegistry]
) -> None:
    provider = key_provider_from_settings(toy_settings)
    repo = ModelRepository(toy_settings.repository_dir)
    imaging = dataclasses.replace(
        exported_doubler("imaging"), onnx_bytes=image_model_bytes(), extensions={"dicom": GOOD}
    )
    publish(repo, imaging, provider)
    broken = {**GOOD, "resample": "lanczos"}
    publish(repo, dataclasses.replace(imaging, extensions={"dicom": broken}), provider)

    async def main() -> None:
        registry = make_registry(hooks=(dicom_hook,))
        await registry.start()
        try:
            cause = registry.failures[("imaging", 2)]
            assert cause.startswith("model 'imaging' version 2: extensions.dicom.resample:")
            assert "Input should be 'area' or 'bilinear'" in cause
            good = registry.resolve("imaging", 1)
            assert dicom_spec(good.hooks) == DicomPreprocessing.model_validate(GOOD)
            assert dicom_spec(registry.resolve("toy", None).hooks) is None  # no block, no hook
            prediction = await good.predict({"image": np.ones((1, 1, 8, 8), np.float32)})
            np.testing.assert_allclose(prediction.outputs["y"], [[1.0]])
        finally:
            await registry.stop()

    asyncio.run(main())
