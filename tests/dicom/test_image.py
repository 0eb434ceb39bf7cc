"""The preprocessing pipeline against the standard's formulas, computed here independently."""

from __future__ import annotations

import numpy as np

from phiserve.dicom.image import preprocess, resize, to_unit_range
from phiserve.dicom.spec import DicomPreprocessing
from tests.dicom import instances


def _spec(**fields: object) -> DicomPreprocessing:
    return DicomPreprocessing.model_validate(
        {"input": "image", "height": 64, "width": 64, **fields}
    )


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), scaled to [0, 1]."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_the_header_window_is_applied_and_monochrome1_inverted() -> None:
    ds = instances.read("RG3_UNCR.dcm")  # MONOCHROME1, window 550 / 1024, no rescale
    stored = ds.pixel_array
    unit = to_unit_range(ds, stored, "header")
    expected = 1.0 - _linear_window(stored.astype(np.float64), 550.0, 1024.0)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, expected, atol=2e-6)


def test_monochrome2_of_the_same_values_is_the_complement() -> None:
    ds = instances.read("RG3_UNCR.dcm")
    stored = ds.pixel_array
    inverted = to_unit_range(ds, stored, "header")
    ds.PhotometricInterpretation = "MONOCHROME2"
    np.testing.assert_allclose(to_unit_range(ds, stored, "header"), 1.0 - inverted, atol=1e-6)


def test_the_window_applies_to_rescaled_values() -> None:
    """Stored values rescaled by slope 2 and intercept -100, the window given in those units:
    the same image (LINEAR_EXACT, whose formula has no offsets, makes the check exact)."""
    ds = instances.read("RG3_UNCR.dcm")
    stored = ds.pixel_array
    ds.VOILUTFunction = "LINEAR_EXACT"
    plain = to_unit_range(ds, stored, "header")
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 2 * 550 - 100, 2 * 1024
    np.testing.assert_allclose(to_unit_range(ds, stored, "header"), plain, atol=1e-6)
    expected = 1.0 - np.clip((stored - 550.0) / 1024.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(plain, expected, atol=2e-6)


def test_a_sigmoid_window_follows_the_standard() -> None:
    ds = instances.small_cr()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 600, 800, "SIGMOID"
    stored = ds.pixel_array
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored - 600.0) / 800.0))
    np.testing.assert_allclose(to_unit_range(ds, stored, "header"), expected, atol=1e-6)


def test_a_voi_lut_sequence_is_applied_and_scaled_by_its_bit_depth() -> None:
    ds = instances.read("vlut_04.dcm")
    ds.Modality = "CR"
    stored = ds.pixel_array
    item = ds.VOILUTSequence[0]
    entries, first, bits = item.LUTDescriptor
    lut = np.asarray(item.LUTData, dtype=np.float64)
    index = np.clip(stored.astype(np.int64) - first, 0, (entries or 65536) - 1)
    expected = lut[index] / (2**bits - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(to_unit_range(ds, stored, "header"), expected, atol=1e-6)


def test_without_a_voi_the_image_range_is_used() -> None:
    ds = instances.small_cr()  # MR_small has a window: ask for min-max instead
    stored = ds.pixel_array.astype(np.float64)
    unit = to_unit_range(ds, ds.pixel_array, "minmax")
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    del ds.WindowCenter, ds.WindowWidth
    np.testing.assert_allclose(to_unit_range(ds, ds.pixel_array, "header"), unit)
    constant = np.full((8, 8), 7, dtype=np.uint16)
    assert not to_unit_range(ds, constant, "minmax").any()


def test_area_resampling_is_the_block_mean() -> None:
    rng = np.random.default_rng(3)
    unit = rng.random((128, 192), dtype=np.float32)
    out = resize(unit, _spec(height=32, width=48, resample="area"))
    expected = unit.reshape(32, 4, 48, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_bilinear_resampling_keeps_constants_and_range() -> None:
    unit = np.full((100, 70), 0.25, dtype=np.float32)
    np.testing.assert_allclose(resize(unit, _spec(resample="bilinear")), 0.25, atol=1e-6)


def test_padding_keeps_the_aspect_ratio_centred_on_black() -> None:
    unit = np.ones((100, 50), dtype=np.float32)  # twice as tall as wide
    out = resize(unit, _spec(fit="pad"))
    assert out.shape == (64, 64)
    columns = np.flatnonzero(out.max(axis=0) > 0)
    assert (columns[0], columns[-1]) == (16, 47)  # 32 columns of image, centred
    np.testing.assert_allclose(out[:, 16:48], 1.0, atol=1e-6)
    assert not out[:, :16].any()
    assert not out[:, 48:].any()
    stretched = resize(unit, _spec(fit="stretch"))
    np.testing.assert_allclose(stretched, 1.0, atol=1e-6)


def test_mean_and_std_normalise_last() -> None:
    ds = instances.read("RG3_UNCR.dcm")
    plain = preprocess(ds, _spec())
    normalised = preprocess(ds, _spec(mean=0.5, std=0.25))
    np.testing.assert_allclose(normalised, (plain - 0.5) / 0.25, atol=1e-5)


def test_jpeg_2000_lossless_preprocesses_exactly_like_the_uncompressed_file() -> None:
    spec = _spec(height=224, width=224, fit="pad")
    for base in ("RG3", "RG1"):
        uncompressed = preprocess(instances.read(f"{base}_UNCR.dcm"), spec)
        lossy = preprocess(instances.read(f"{base}_J2KI.dcm"), spec)
        assert np.abs(lossy - uncompressed).max() < 0.1  # irreversible compression, 30:1
        assert abs(float(lossy.mean() - uncompressed.mean())) < 1e-3
    np.testing.assert_array_equal(
        preprocess(instances.read("RG3_J2KR.dcm"), spec),
        preprocess(instances.read("RG3_UNCR.dcm"), spec),
    )
