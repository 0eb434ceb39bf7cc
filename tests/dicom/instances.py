"""Real DICOM files for the tests, and variants of them made with pydicom (nothing downloaded).

pydicom ships CT_small, MR_small and friends; pydicom-data holds the chest and extremity CRs
(RG1, RG3: uncompressed, JPEG 2000 lossless and lossy) that ``get_testdata_file(name,
download=False)`` resolves from the installed package.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread, uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

# Chest and extremity CRs: MONOCHROME1, 10-bit, a window in the header.
CR_FILES = ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm", "RG1_UNCR.dcm", "RG1_J2KI.dcm")
SMALL_CR = "RG3_J2KI.dcm"  # 207 KB, JPEG 2000 lossy

# PHI the canary tests plant: none of these strings may leave the request.
CANARIES = {
    "PatientName": "ZEBRACANARY^QUILLON",
    "PatientID": "CANARYMRN77123",
    "PatientBirthDate": "19030417",
    "AccessionNumber": "CANARYACC5521",
    "InstitutionName": "Canaryvale Memorial",
    "ReferringPhysicianName": "CANARYDOC^PERPETUA",
    "OtherPatientIDs": "CANARYOTHER9981",
    "StudyDescription": "canary description xyzzy",
    "SOPInstanceUID": "1.2.826.0.1.3680043.9.7777.424242",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.7777.515151",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.9.7777.616161",
}
PRIVATE_CANARY = "CANARYPRIVATE-VALUE-31337"
PRIVATE_CREATOR = "CANARY CREATOR"
# An invalid Instance Number (IS): pydicom's reader warns about such values, quoting them.
INVALID_CANARY = "CANARY7"
_INSTANCE_NUMBER = "7777777"


def path(name: str) -> Path:
    """A test file by name, resolved offline."""
    found = get_testdata_file(name, download=False)
    assert found is not None, f"{name} is not installed (pydicom or pydicom-data)"
    return Path(found)


def raw(name: str) -> bytes:
    """The bytes of a test file."""
    return path(name).read_bytes()


def read(name: str) -> Dataset:
    """A test file, parsed."""
    return dcmread(path(name))


def encode(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_canaries(ds: Dataset) -> Dataset:
    """``ds`` with every canary planted, a private block included (changed in place)."""
    for keyword, value in CANARIES.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = CANARIES["SOPInstanceUID"]
    block = ds.private_block(0x0099, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", PRIVATE_CANARY)
    ds.InstanceNumber = _INSTANCE_NUMBER  # made invalid in the bytes by encode_canaries
    return ds


def encode_canaries(ds: Dataset) -> bytes:
    """``ds`` with the canaries planted, as a file whose Instance Number is not a number."""
    raw = encode(with_canaries(ds))
    padded = _INSTANCE_NUMBER.encode() + b" "  # IS values are padded to an even length
    assert raw.count(padded) == 1
    return raw.replace(padded, INVALID_CANARY.encode() + b" ")


def small_cr(modality: str = "CR") -> Dataset:
    """MR_small's 64 x 64 pixels as a CR (a quick file for fuzzing and unit tests)."""
    ds = read("MR_small.dcm")
    ds.Modality = modality
    return ds


def rle(ds: Dataset) -> Dataset:
    """``ds`` re-encoded as RLE Lossless (pydicom's own encoder)."""
    ds.compress(uid.RLELossless, encoding_plugin="pydicom")
    return ds


def j2k(ds: Dataset) -> Dataset:
    """``ds`` re-encoded as JPEG 2000 Lossless (pylibjpeg-openjpeg's encoder)."""
    ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def jpeg_baseline(ds: Dataset) -> Dataset:
    """``ds`` as 8-bit JPEG Baseline (Pillow encodes; the stored values are scaled to 8 bits)."""
    pixels = ds.pixel_array.astype(np.float64)
    scaled = np.round(255 * (pixels - pixels.min()) / max(1.0, np.ptp(pixels))).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(scaled).save(out, format="JPEG", quality=95)
    ds.PixelData = encapsulate([out.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    return ds


def multipart(parts: list[tuple[str, bytes]], boundary: str = "DICOMwebBoundary42") -> bytes:
    """A STOW-RS body as DICOMweb clients build it: CRLF framing, one Content-Type per part."""
    out = io.BytesIO()
    for content_type, data in parts:
        out.write(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def stow_content_type(boundary: str = "DICOMwebBoundary42") -> str:
    """The request Content-Type that goes with :func:`multipart`."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'
