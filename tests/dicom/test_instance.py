"""Reading instances: accepted transfer syntaxes, refusals that name what is wrong, bombs, fuzz."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames

from phiserve.dicom.errors import (
    InstanceTooLarge,
    MalformedInstance,
    UnsupportedImage,
    UnsupportedModality,
    UnsupportedTransferSyntax,
)
from phiserve.dicom.image import preprocess
from phiserve.dicom.instance import (
    ACCEPTED_SYNTAXES,
    check_image,
    instance_uids,
    read_instance,
    transfer_syntax,
)
from phiserve.dicom.spec import DicomPreprocessing
from phiserve.errors import PhiserveError
from tests.dicom import instances

CR_DX = ("CR", "DX")
MAX_PIXELS = 25_000_000
SPEC = DicomPreprocessing(input="image", height=64, width=64)


def _prepare(raw: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """What the server does with one instance's bytes."""
    ds = read_instance(raw)
    check_image(ds, CR_DX, max_pixels)
    return preprocess(ds, SPEC)


def test_jpeg_2000_rle_jpeg_and_native_syntaxes_are_accepted() -> None:
    assert {
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.RLELossless,
        uid.JPEGBaseline8Bit,
    } <= ACCEPTED_SYNTAXES
    assert uid.DeflatedExplicitVRLittleEndian not in ACCEPTED_SYNTAXES


@pytest.mark.parametrize("name", instances.CR_FILES)
def test_real_chest_and_extremity_crs_decode(name: str) -> None:
    tensor = _prepare(instances.raw(name))
    assert tensor.shape == (1, 1, 64, 64)
    assert tensor.dtype == np.float32
    assert 0.0 <= tensor.min() < tensor.max() <= 1.0


def test_rle_jpeg_baseline_and_implicit_vr_variants_decode() -> None:
    for ds in (
        instances.rle(instances.small_cr()),
        instances.jpeg_baseline(instances.small_cr()),
        instances.small_cr(),  # MR_small is Explicit VR Little Endian
    ):
        assert _prepare(instances.encode(ds)).shape == (1, 1, 64, 64)
    implicit = instances.raw("MR_small_implicit.dcm")
    ds = read_instance(implicit)
    assert ds.file_meta.TransferSyntaxUID == uid.ImplicitVRLittleEndian


@pytest.mark.parametrize(
    ("name", "named"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
        ("image_dfl.dcm", "Deflated Explicit VR Little Endian"),
    ],
)
def test_other_transfer_syntaxes_are_a_415_naming_them(name: str, named: str) -> None:
    with pytest.raises(UnsupportedTransferSyntax) as refused:
        read_instance(instances.raw(name))
    assert refused.value.status == 415
    assert f"transfer syntax {named} is not accepted" in refused.value.message
    assert "JPEG 2000 Image Compression" in refused.value.message  # what to send instead


def test_an_unregistered_transfer_syntax_is_not_echoed() -> None:
    ds = instances.small_cr()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8.999"
    raw = instances.encode(ds)
    with pytest.raises(UnsupportedTransferSyntax) as refused:
        transfer_syntax(raw)
    assert "1.2.3.4.5.6.7.8.999" not in refused.value.message
    assert "an unregistered transfer syntax" in refused.value.message


@pytest.mark.parametrize(("name", "modality"), [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_other_modalities_are_a_422_naming_the_modality(name: str, modality: str) -> None:
    ds = read_instance(instances.raw(name))
    with pytest.raises(UnsupportedModality) as refused:
        check_image(ds, CR_DX, MAX_PIXELS)
    assert refused.value.status == 422
    assert refused.value.message == f"modality {modality} is not accepted; this model takes CR, DX"


def test_a_modality_outside_the_standard_list_is_not_echoed() -> None:
    ds = read_instance(instances.encode(instances.small_cr(modality="SMITHJOHN")))
    with pytest.raises(UnsupportedModality) as refused:
        check_image(ds, CR_DX, MAX_PIXELS)
    assert "SMITHJOHN" not in refused.value.message
    assert "an unlisted modality" in refused.value.message


def test_dx_is_accepted_and_a_model_may_take_dx_only() -> None:
    dx = read_instance(instances.encode(instances.small_cr(modality="DX")))
    check_image(dx, CR_DX, MAX_PIXELS)
    cr = read_instance(instances.encode(instances.small_cr()))
    with pytest.raises(UnsupportedModality, match="this model takes DX"):
        check_image(cr, ("DX",), MAX_PIXELS)


def test_colour_multiframe_and_pixel_less_instances_are_refused() -> None:
    rgb = instances.read("SC_rgb.dcm")
    rgb.Modality = "CR"
    with pytest.raises(UnsupportedImage, match="photometric interpretation RGB with 3 sample"):
        check_image(read_instance(instances.encode(rgb)), CR_DX, MAX_PIXELS)
    frames = instances.small_cr()
    frames.NumberOfFrames = 2
    with pytest.raises(UnsupportedImage, match="multi-frame"):
        check_image(read_instance(instances.encode(frames)), CR_DX, MAX_PIXELS)
    bare = instances.small_cr()
    del bare.PixelData
    with pytest.raises(UnsupportedImage, match="no Pixel Data"):
        check_image(read_instance(instances.encode(bare)), CR_DX, MAX_PIXELS)


def test_uids_are_read_for_pseudonyms() -> None:
    ds = read_instance(instances.encode(instances.with_canaries(instances.small_cr())))
    c = instances.CANARIES
    assert instance_uids(ds) == (
        c["SOPInstanceUID"],
        c["SeriesInstanceUID"],
        c["StudyInstanceUID"],
    )


# --- what must be refused before decoding --------------------------------------------------


def test_huge_declared_dimensions_are_refused_from_the_header() -> None:
    ds = instances.small_cr()
    ds.Rows = ds.Columns = 65535  # 4.3 G pixels declared over 8 KB of pixel data
    with pytest.raises(InstanceTooLarge) as refused:
        _prepare(instances.encode(ds))
    assert refused.value.status == 413
    with pytest.raises(InstanceTooLarge):
        _prepare(instances.raw(instances.SMALL_CR), max_pixels=1760 * 1760 - 1)


def _patch_j2k_size(codestream: bytes, rows: int, columns: int) -> bytes:
    """The codestream with its SIZ marker claiming ``rows`` x ``columns``."""
    siz = codestream.index(b"\xff\x51")
    # SIZ: marker, Lsiz, Rsiz, then Xsiz, Ysiz (image extent) as big-endian 32-bit.
    return codestream[: siz + 6] + struct.pack(">LL", columns, rows) + codestream[siz + 14 :]


def _rss() -> int:
    return psutil.Process().memory_info().rss


def test_a_jpeg_2000_bomb_is_refused_before_decoding() -> None:
    """A 207 KB file whose codestream claims 60000 x 60000 (14 GB decoded) under a small header."""
    ds = instances.read(instances.SMALL_CR)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([_patch_j2k_size(frame, 60000, 60000)])
    raw = instances.encode(ds)
    assert len(raw) < 300_000
    before = _rss()
    with pytest.raises(MalformedInstance, match="dimensions differ from Rows and Columns"):
        _prepare(raw)
    assert _rss() - before < 50_000_000


def test_a_jpeg_bomb_is_refused_before_decoding() -> None:
    """The SOF claims 8000 x 8000 (or 60000 x 60000, which Pillow itself calls a bomb)."""
    ds = instances.jpeg_baseline(instances.small_cr())
    frame = bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    sof = frame.index(b"\xff\xc0")
    before = _rss()
    for side, message in ((8000, "dimensions differ"), (60000, "cannot be read")):
        size = struct.pack(">HH", side, side)  # height, width
        ds.PixelData = encapsulate([frame[: sof + 5] + size + frame[sof + 9 :]])
        with pytest.raises(MalformedInstance, match=message):
            _prepare(instances.encode(ds))
    assert _rss() - before < 50_000_000


def test_an_rle_bomb_is_refused_before_decoding() -> None:
    """64 x 64 declared; each segment's runs would expand 2 bytes into 128, 4 MB in all."""
    ds = instances.rle(instances.small_cr())
    runs = b"\x81\x00" * 32768
    header = struct.pack("<16L", 2, 64, 64 + len(runs), *([0] * 13))
    ds.PixelData = encapsulate([header + runs + runs])
    raw = instances.encode(ds)
    assert len(raw) < 200_000
    with pytest.raises(InstanceTooLarge, match="RLE segment"):
        _prepare(raw)


def test_truncated_files_and_broken_framing_are_400s() -> None:
    raw = instances.raw(instances.SMALL_CR)
    for cut in (0, 100, 132, 300, 2000, 5000, len(raw) // 2, len(raw) - 10):
        with pytest.raises(MalformedInstance) as refused:
            _prepare(raw[:cut])
        assert refused.value.status == 400, cut
    with pytest.raises(MalformedInstance, match="Part 10"):
        read_instance(b"\x00" * 128 + b"NOPE" + raw[132:])


def _answered_or_4xx(data: bytes) -> None:
    try:
        tensor = _prepare(data)
    except PhiserveError as exc:
        assert 400 <= exc.status < 500
    else:
        assert tensor.shape == (1, 1, 64, 64)


def test_wrong_element_lengths_are_4xx_or_read_within_the_bytes() -> None:
    raw = instances.encode(instances.small_cr())
    rows_tag = raw.index(b"\x28\x00\x10\x00US")  # (0028,0010) Rows, explicit VR little endian
    for length in (0, 1, 3, 0xFFFF):
        broken = raw[: rows_tag + 6] + struct.pack("<H", length) + raw[rows_tag + 8 :]
        with pytest.raises(PhiserveError) as refused:
            _prepare(broken)
        assert 400 <= refused.value.status < 500, length
    pixel_tag = raw.index(b"\xe0\x7f\x10\x00OW")
    for length in (0, 2, 8190, 0x7FFFFFFE, 0xFFFFFFFF):
        _answered_or_4xx(raw[: pixel_tag + 8] + struct.pack("<L", length) + raw[pixel_tag + 12 :])


_SEED_FILES = {
    "native": instances.encode(instances.small_cr()),
    "rle": instances.encode(instances.rle(instances.small_cr())),
    "jpeg": instances.encode(instances.jpeg_baseline(instances.small_cr())),
    "j2k": instances.encode(instances.j2k(instances.small_cr())),
}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.sampled_from(sorted(_SEED_FILES)),
    edits=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 20_000)),
)
def test_fuzzed_instances_are_answered_or_refused_with_a_4xx(
    seed: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    """Random byte edits and truncations of real files: a tensor or a typed 4xx, nothing else."""
    raw = bytearray(_SEED_FILES[seed])
    for offset, value in edits:
        raw[offset % len(raw)] = value
    _answered_or_4xx(bytes(raw[:cut] if cut is not None else raw))


def test_fuzzing_keeps_memory_bounded() -> None:
    """Hundreds of broken files leave the process's resident memory where it was."""
    rng = np.random.default_rng(7)
    raw = _SEED_FILES["rle"]
    _prepare(raw)  # warm up caches and lazy imports first
    before = _rss()
    for _ in range(500):
        data = bytearray(raw)
        for offset in rng.integers(0, len(data), 6):
            data[offset] = int(rng.integers(0, 256))
        with contextlib.suppress(PhiserveError):
            _prepare(bytes(data))
    assert _rss() - before < 64_000_000


def test_decoded_pixels_are_bounded_by_the_header() -> None:
    """A native file shorter than its header says is refused, not padded to a huge size."""
    ds = instances.small_cr()
    ds.Rows = 4000  # 4000 x 64 declared, 64 x 64 present
    with pytest.raises(MalformedInstance, match="cannot be decoded"):
        _prepare(instances.encode(ds))
