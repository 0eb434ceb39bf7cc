"""From a DICOM data set to the model's input tensor, exactly as the export declared.

One implementation serves both sides: the export script imports :func:`preprocess` with the
:class:`~phiserve.dicom.spec.DicomPreprocessing` it records in the manifest, and the server runs
it with the block read back from the authenticated manifest. pydicom applies the modality LUT
and the VOI (LUT or window, PS3.3 C.11); Pillow resizes (mode ``F``, 32-bit float).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from phiserve.dicom.errors import MalformedInstance, UnsupportedImage
from phiserve.dicom.instance import decode_pixels
from phiserve.dicom.spec import DicomPreprocessing

_RESAMPLE: Final = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}
# Inputs far outside any pixel range: a window maps them to the ends of its output range.
_PROBE: Final = np.array([-1e300, 1e300])


def preprocess(ds: Dataset, spec: DicomPreprocessing) -> np.ndarray:
    """The FP32 tensor ``[1, 1, height, width]`` of one instance (the server first refuses,
    with :func:`~phiserve.dicom.instance.check_image`, what this must not decode)."""
    unit = to_unit_range(ds, decode_pixels(ds), spec.voi)
    resized = resize(unit, spec)
    resized -= spec.mean
    resized /= spec.std
    return resized.reshape(1, 1, spec.height, spec.width)


def to_unit_range(ds: Dataset, stored: np.ndarray, voi: str) -> np.ndarray:
    """Modality LUT, VOI scaled to [0, 1] (0 is black), MONOCHROME1 inverted; float32."""
    lut, window = ds.get("VOILUTSequence"), "WindowCenter" in ds and "WindowWidth" in ds
    try:
        values = apply_modality_lut(stored, ds)
        if voi == "header" and lut:
            out = apply_voi(values, ds, index=0)
            # PS3.3 C.11.2.1.1: the descriptor's third value is the bit depth of the entries.
            low, high = 0.0, float(2 ** int(lut[0].LUTDescriptor[2]) - 1)
        elif voi == "header" and window:
            out = apply_windowing(values, ds, index=0)
            # The window's output range is what it makes of the lowest and highest inputs
            # (pydicom's y_min and y_max, which depend on the bit depth and the rescale).
            with np.errstate(over="ignore"):
                low, high = apply_windowing(_PROBE.copy(), ds, index=0)
        else:
            out = values
            low, high = float(np.min(values)), float(np.max(values))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError):
        raise UnsupportedImage(
            "the modality LUT or VOI of the instance cannot be applied"
        ) from None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise MalformedInstance("the instance's VOI has no finite range")
    unit = np.asarray(out, dtype=np.float32)
    if high != low:
        unit -= np.float32(low)
        unit /= np.float32(high - low)
        np.clip(unit, 0.0, 1.0, out=unit)
    else:  # a constant image (or a degenerate VOI): nothing to show
        unit[...] = 0.0
    if ds.PhotometricInterpretation == "MONOCHROME1":  # the minimum is white: invert
        np.subtract(1.0, unit, out=unit)
    return unit


def resize(unit: np.ndarray, spec: DicomPreprocessing) -> np.ndarray:
    """``unit`` (2-D float32) resized to ``spec.height`` x ``spec.width`` as declared."""
    image = Image.fromarray(np.ascontiguousarray(unit, dtype=np.float32))
    resample = _RESAMPLE[spec.resample]
    if spec.fit == "stretch":
        return np.array(image.resize((spec.width, spec.height), resample), dtype=np.float32)
    rows, columns = unit.shape
    scale = min(spec.height / rows, spec.width / columns)
    height = min(spec.height, max(1, round(rows * scale)))
    width = min(spec.width, max(1, round(columns * scale)))
    canvas = np.zeros((spec.height, spec.width), dtype=np.float32)
    top, left = (spec.height - height) // 2, (spec.width - width) // 2
    canvas[top : top + height, left : left + width] = np.asarray(
        image.resize((width, height), resample)
    )
    return canvas
