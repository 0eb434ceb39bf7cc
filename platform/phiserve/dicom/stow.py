"""DICOMweb STOW-RS bodies: ``multipart/related; type="application/dicom"`` split into instances.

python-multipart (Starlette's parser) walks the RFC 2046 framing; each part keeps its own
Content-Type and bytes. A part over the per-instance byte limit is kept as a refusal (its bytes
are dropped as they arrive), so one oversized instance fails alone, as in STOW-RS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from phiserve.dicom.errors import InstanceTooLarge, NotDicom
from phiserve.errors import BadRequest, PayloadTooLarge, PhiserveError, UnsupportedMediaType

DICOM = "application/dicom"
RELATED = "multipart/related"

# The parser logs the body bytes it did not expect: keep them out of the process output.
logging.getLogger("python_multipart").propagate = False
logging.getLogger("python_multipart").addHandler(logging.NullHandler())


@dataclass(slots=True)
class Part:
    """One body part: its bytes, or why it is refused."""

    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    media_type: str = ""
    error: PhiserveError | None = None

    @property
    def data(self) -> bytes:
        """The part's bytes."""
        return b"".join(self.chunks)


def media_type(content_type: bytes | None) -> tuple[str, dict[bytes, bytes]]:
    """The lower-case media type and parameters of a Content-Type header."""
    value, params = parse_options_header(content_type or b"")
    return value.decode("latin-1"), params


def split_related(
    body: bytes, params: dict[bytes, bytes], max_parts: int, max_part_bytes: int
) -> list[Part]:
    """The parts of a multipart/related body, in order; 4xx for the body as a whole.

    The ``type`` parameter, when given, must be application/dicom (415); parts that declare
    another Content-Type are refused one by one. More than ``max_parts`` parts is a 413.
    """
    declared = params.get(b"type", DICOM.encode()).decode("latin-1").strip().lower()
    if declared != DICOM:
        raise UnsupportedMediaType(f'multipart/related bodies must have type="{DICOM}"')
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/related Content-Type has no boundary")
    # RFC 2046 allows a preamble before the first delimiter; the parser does not.
    first = body.find(b"--" + boundary)
    if first > 0 and body[first - 2 : first] == b"\r\n":
        body = body[first:]
    parts: list[Part] = []
    header: dict[str, list[bytes]] = {"field": [], "value": []}
    ended: list[bool] = []

    def begin() -> None:
        if len(parts) == max_parts:
            raise PayloadTooLarge(f"more than {max_parts} instances in one request")
        parts.append(Part())

    def header_part(kind: str) -> Callable[[bytes, int, int], None]:
        return lambda data, start, end: header[kind].append(data[start:end])

    def header_end() -> None:
        name = b"".join(header["field"]).strip().lower()
        if name == b"content-type":
            parts[-1].media_type = media_type(b"".join(header["value"]))[0]
        header["field"].clear()
        header["value"].clear()

    def data(chunk: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.size += end - start
        if part.error is None and part.size > max_part_bytes:
            part.error = InstanceTooLarge(f"an instance exceeds the {max_part_bytes}-byte limit")
            part.chunks.clear()
        if part.error is None:
            part.chunks.append(chunk[start:end])

    def headers_done() -> None:
        if parts[-1].media_type not in ("", DICOM):
            parts[-1].error = NotDicom(f"a part is not {DICOM}")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header_part("field"),
            "on_header_value": header_part("value"),
            "on_header_end": header_end,
            "on_headers_finished": headers_done,
            "on_part_data": data,
            "on_end": lambda: ended.append(True),
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise BadRequest("the multipart/related body is malformed") from None
    if not ended:
        raise BadRequest("the multipart/related body ends before its closing boundary")
    if not parts:
        raise BadRequest("the multipart/related body holds no instance")
    return parts
