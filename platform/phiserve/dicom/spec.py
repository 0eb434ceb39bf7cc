"""What an imaging model's export declares about DICOM input: the manifest's ``extensions["dicom"]``.

The block lives in the authenticated manifest, so the server resizes and normalises exactly as
the export declared; :func:`dicom_hook` validates it when a version loads (a bad block fails the
version with a cause naming the field) and checks it against the model's signature.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from phiserve.errors import ModelLoadError
from phiserve.model import ModelHook
from phiserve.repository.manifest import Manifest

EXTENSION = "dicom"


class DicomPreprocessing(BaseModel):
    """How a DICOM image becomes the model's input tensor ``[1, 1, height, width]`` (FP32).

    The pipeline (:func:`phiserve.dicom.image.preprocess`): stored values -> modality LUT
    (rescale slope and intercept) -> VOI (``header``: the instance's VOI LUT or first window,
    min-max when it has neither; ``minmax``: always the image's own range) scaled to [0, 1] ->
    MONOCHROME1 inverted -> resized to ``height`` x ``width`` (``fit``: ``stretch`` to fill, or
    ``pad`` keeping the aspect ratio, centred on black) with ``resample`` (``area``: box filter;
    ``bilinear``) -> ``(x - mean) / std``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input: str = Field(min_length=1, description="The model input the image feeds.")
    modalities: tuple[Literal["CR", "DX"], ...] = Field(default=("CR", "DX"), min_length=1)
    height: int = Field(ge=1, le=8192)
    width: int = Field(ge=1, le=8192)
    voi: Literal["header", "minmax"] = "header"
    fit: Literal["stretch", "pad"] = "stretch"
    resample: Literal["area", "bilinear"] = "area"
    mean: float = 0.0
    std: float = Field(default=1.0, gt=0)


class DicomHook(ModelHook):
    """Marks a model version as taking DICOM and carries its validated preprocessing.

    The DICOM front end preprocesses before the data plane (off the event loop), so the hook
    changes nothing on the request path; V2 tensor requests pass through untouched.
    """

    def __init__(self, spec: DicomPreprocessing) -> None:
        self.spec = spec


def dicom_hook(manifest: Manifest) -> DicomHook | None:
    """The hook factory: ``None`` when the manifest declares no DICOM block."""
    spec = manifest.extension(EXTENSION, DicomPreprocessing)
    if spec is None:
        return None
    where = f"model {manifest.name!r} version {manifest.version}: extensions.{EXTENSION}"
    inputs = {t.name: t for t in manifest.inputs}
    tensor = inputs.get(spec.input)
    if tensor is None:
        raise ModelLoadError(f"{where}.input: the model has no input {spec.input!r}")
    expected = [1, 1, spec.height, spec.width]
    if tensor.datatype != "FP32" or len(tensor.shape) != 4:
        raise ModelLoadError(f"{where}.input: {spec.input!r} is not an FP32 [N, 1, H, W] tensor")
    if any(dim not in (-1, want) for dim, want in zip(tensor.shape, expected, strict=True)):
        raise ModelLoadError(
            f"{where}: height and width give {expected}, input {spec.input!r} is {tensor.shape}"
        )
    return DicomHook(spec)


def dicom_spec(hooks: tuple[ModelHook, ...]) -> DicomPreprocessing | None:
    """The DICOM preprocessing of a loaded model (from its hooks), or ``None``."""
    for hook in hooks:
        if isinstance(hook, DicomHook):
            return hook.spec
    return None
