"""Reading one DICOM instance with pydicom, refusing what cannot be decoded safely before decoding.

Order of the checks, each before anything large is allocated:

1. Part 10 framing and the transfer syntax, read from the file meta group alone: one that
   pydicom and the installed plugins cannot decode here is a 415. Deflated Explicit VR is
   refused too: pydicom inflates the whole data set in one call, before any size is known.
2. The data set (bounded by the request's byte limit), then what the image must be: a listed
   modality (CR or DX), one frame, one sample per pixel, MONOCHROME1 or MONOCHROME2.
3. Rows x Columns against ``max_pixels``; for compressed pixel data, the dimensions the
   codestream itself declares (JPEG 2000 SIZ via openjpeg, JPEG SOF via Pillow, RLE segment
   lengths) must equal the header's, so a small file cannot decode into a huge image.

pydicom's own warnings and log lines may quote element values (an invalid date, a name), so
this module turns its value validation off and keeps its logger and warnings out of the
process output.
"""

from __future__ import annotations

import io
import itertools
import logging
import struct
import warnings
from typing import Final

import numpy as np
import openjpeg
import pydicom
import pydicom.config
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import get_decoder

from phiserve.dicom.errors import (
    InstanceTooLarge,
    MalformedInstance,
    UnsupportedImage,
    UnsupportedModality,
    UnsupportedTransferSyntax,
)

# Header values reach pydicom's warnings and logger only: keep both out of the process output.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").propagate = False
logging.getLogger("pydicom").addHandler(logging.NullHandler())
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")

_NATIVE: Final = frozenset(
    {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian}
)
_J2K: Final = frozenset(
    {uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K}
)
_JPEG: Final = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit})
# Syntaxes whose decoded size this module can check before decoding; of these, the ones a
# pydicom decoder plugin is installed for are accepted.
_BOUNDED: Final = _NATIVE | _J2K | _JPEG | {uid.RLELossless}
_MONOCHROME: Final = frozenset({"MONOCHROME1", "MONOCHROME2"})
# Only values from the standard's own lists are named in an error: any other text in these
# elements is unknown content (PS3.3 C.7.3.1.1.1 modalities; C.7.6.3.1.2 photometrics).
_KNOWN_CODES: Final = frozenset(
    (
        "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DG", "DMS", "DOC",
        "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT",
        "IVUS", "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM", "OPT",
        "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA", "PLAN", "POS", "PR", "PT", "PX", "REG", "RESP",
        "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN",
        "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA",
        "XA", "XAPROTOCOL", "XC", "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
        "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB", "PALETTE COLOR"
    )
)  # fmt: skip


def _decodable(syntax: uid.UID) -> bool:
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


ACCEPTED_SYNTAXES: Final = frozenset(s for s in _BOUNDED if _decodable(s))


def _code(value: object, what: str) -> str:
    text = "" if value is None else str(value)
    if text in _KNOWN_CODES:
        return f"{what} {text}"
    return f"an unlisted {what}" if text else f"no {what}"


def transfer_syntax(raw: bytes) -> uid.UID:
    """The instance's transfer syntax, read from its file meta group; 415 unless accepted."""
    fp = io.BytesIO(raw)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)
        syntax = meta.get("TransferSyntaxUID")
    except Exception:  # pydicom raises many types for broken framing; none is a server fault
        raise MalformedInstance("not a DICOM Part 10 instance (preamble or file meta)") from None
    if not syntax:
        raise MalformedInstance("the file meta names no transfer syntax")
    syntax = uid.UID(str(syntax))
    if syntax not in ACCEPTED_SYNTAXES:
        name = syntax.name if syntax.keyword else "an unregistered transfer syntax"
        accepted = ", ".join(sorted(s.name for s in ACCEPTED_SYNTAXES))
        raise UnsupportedTransferSyntax(f"transfer syntax {name} is not accepted; use {accepted}")
    return syntax


def read_instance(raw: bytes) -> Dataset:
    """The parsed data set, its transfer syntax checked first (pixel data not yet decoded)."""
    transfer_syntax(raw)
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
        # pydicom converts element values on first access, raising whatever a broken value
        # makes it raise: convert every element now, so later reads cannot fail that way.
        for _ in ds.iterall():
            pass
    except Exception:
        raise MalformedInstance("the DICOM data set cannot be parsed") from None
    if len(ds) == 0:  # pydicom drops the whole data set when the bytes end inside an element
        raise MalformedInstance("the DICOM data set is empty or truncated")
    return ds


def instance_uids(ds: Dataset) -> tuple[str, str, str]:
    """SOP Instance, Series Instance and Study Instance UIDs ("" when absent): PHI-grade
    identifiers, to be pseudonymised before they go anywhere."""
    return (
        str(ds.get("SOPInstanceUID", "") or ""),
        str(ds.get("SeriesInstanceUID", "") or ""),
        str(ds.get("StudyInstanceUID", "") or ""),
    )


def check_image(ds: Dataset, modalities: tuple[str, ...], max_pixels: int) -> None:
    """Refuse, before decoding, what the pipeline does not take or what would decode too large."""
    modality = ds.get("Modality")
    if modality not in modalities:
        raise UnsupportedModality(
            f"{_code(modality, 'modality')} is not accepted; "
            f"this model takes {', '.join(modalities)}"
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = ds.get("PhotometricInterpretation")
        has_pixels = "PixelData" in ds
    except Exception:
        raise MalformedInstance("the image pixel module cannot be read") from None
    if not has_pixels:
        raise UnsupportedImage("the instance has no Pixel Data")
    if photometric not in _MONOCHROME or samples != 1:
        raise UnsupportedImage(
            f"{_code(photometric, 'photometric interpretation')} with {samples} sample(s) per "
            "pixel is not accepted; send a MONOCHROME1 or MONOCHROME2 radiograph"
        )
    if frames != 1:
        raise UnsupportedImage("multi-frame instances are not accepted; send one frame")
    if rows <= 0 or columns <= 0:
        raise MalformedInstance("Rows and Columns must be positive")
    if rows * columns > max_pixels:
        raise InstanceTooLarge(f"the image exceeds the {max_pixels}-pixel limit")
    _check_stream(ds, rows, columns)


def _check_stream(ds: Dataset, rows: int, columns: int) -> None:
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax in _NATIVE:
        return  # decoded straight from the bytes already read: no expansion
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        if syntax in _J2K:
            params = openjpeg.get_parameters(frame)
            shape = (params["rows"], params["columns"], params["samples_per_pixel"])
        elif syntax in _JPEG:
            with Image.open(io.BytesIO(frame)) as image:
                shape = (image.height, image.width, len(image.getbands()))
        else:
            shape = _rle_shape(frame, rows, columns, int(ds.BitsAllocated))
    except InstanceTooLarge:
        raise
    except Exception:
        raise MalformedInstance("the compressed pixel data cannot be read") from None
    if shape != (rows, columns, 1):
        raise MalformedInstance("the compressed image's dimensions differ from Rows and Columns")


def _rle_shape(frame: bytes, rows: int, columns: int, bits_allocated: int) -> tuple[int, int, int]:
    """The header's shape if every RLE segment decodes to about Rows x Columns bytes.

    PackBits expands 2 bytes into up to 128: the run headers are walked (no output is made) and
    the walk stops as soon as a segment passes twice its expected length.
    """
    (count, *offsets) = struct.unpack("<16L", frame[:64])
    if count != bits_allocated // 8 or not 0 < count <= 15:
        raise MalformedInstance("the RLE header's segment count does not fit the image")
    bounds = [*offsets[:count], len(frame)]
    limit = 2 * rows * columns
    for start, end in itertools.pairwise(bounds):
        segment = frame[start:end]
        pos, produced, size = 0, 0, len(segment)
        while pos < size:
            header = segment[pos]
            if header < 128:  # a literal run of header + 1 bytes
                produced += header + 1
                pos += header + 2
            elif header > 128:  # one byte repeated 257 - header times
                produced += 257 - header
                pos += 2
            else:
                pos += 1
            if produced > limit:
                raise InstanceTooLarge("an RLE segment decodes to more than the header's image")
    return rows, columns, 1


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values of the (checked) instance."""
    try:
        return ds.pixel_array
    except Exception:
        raise MalformedInstance("the pixel data cannot be decoded") from None
