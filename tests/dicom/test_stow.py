"""STOW-RS bodies: parts in order, per-part refusals, whole-body 4xx for broken framing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phiserve.dicom.errors import InstanceTooLarge, NotDicom
from phiserve.dicom.stow import media_type, split_related
from phiserve.errors import BadRequest, PayloadTooLarge, PhiserveError, UnsupportedMediaType
from tests.dicom.instances import multipart, stow_content_type

DICOM = "application/dicom"


def _split(body: bytes, content_type: str | None = None, **limits: int) -> list:
    _, params = media_type((content_type or stow_content_type()).encode())
    return split_related(
        body, params, limits.get("max_parts", 16), limits.get("max_part_bytes", 1 << 20)
    )


def test_content_type_parameters_are_read() -> None:
    ctype, params = media_type(b'Multipart/Related; type="application/dicom"; boundary=b1')
    assert ctype == "multipart/related"
    assert params == {b"type": b"application/dicom", b"boundary": b"b1"}


def test_parts_come_back_in_order_with_binary_content_intact() -> None:
    # Bytes that look like framing inside a part must survive.
    tricky = b"\r\n--DICOMwebBoundary4\r\n\x00\xff--\r\n"
    parts = _split(multipart([(DICOM, b"first"), (DICOM, tricky), (DICOM, b"")]))
    assert [p.data for p in parts] == [b"first", tricky, b""]
    assert all(p.error is None and p.media_type == DICOM for p in parts)


def test_a_part_of_another_type_or_too_large_fails_alone() -> None:
    body = multipart([(DICOM, b"a" * 100), ("image/png", b"png"), (DICOM, b"ok")])
    parts = _split(body, max_part_bytes=50)
    assert isinstance(parts[0].error, InstanceTooLarge)
    assert parts[0].chunks == []  # its bytes were dropped as they came
    assert isinstance(parts[1].error, NotDicom)
    assert parts[2].error is None
    assert parts[2].data == b"ok"


def test_a_preamble_is_skipped_and_parts_without_headers_are_dicom() -> None:
    body = b"preamble text\r\n--B\r\n\r\nbare\r\n--B--\r\n"
    parts = _split(body, 'multipart/related; type="application/dicom"; boundary=B')
    assert [(p.media_type, p.data) for p in parts] == [("", b"bare")]


@pytest.mark.parametrize(
    ("content_type", "error"),
    [
        ('multipart/related; type="application/pdf"; boundary=B', UnsupportedMediaType),
        ('multipart/related; type="application/dicom"', BadRequest),
    ],
)
def test_the_body_type_and_boundary_are_required(
    content_type: str, error: type[PhiserveError]
) -> None:
    with pytest.raises(error):
        _split(multipart([(DICOM, b"x")], boundary="B"), content_type)


def test_too_many_parts_is_a_413() -> None:
    with pytest.raises(PayloadTooLarge, match="more than 2 instances"):
        _split(multipart([(DICOM, b"x")] * 3), max_parts=2)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary here at all",
        b"--DICOMwebBoundary42--\r\n",  # no part
        multipart([(DICOM, b"cut")])[:-10],  # no closing delimiter
    ],
)
def test_broken_framing_is_a_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        _split(body)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
    cut=st.integers(0, 400),
    flip=st.tuples(st.integers(0, 400), st.integers(0, 255)),
)
def test_fuzzed_bodies_split_or_are_refused(parts: list[bytes], cut: int, flip: tuple) -> None:
    body = bytearray(multipart([(DICOM, p) for p in parts]))
    assert [p.data for p in _split(bytes(body))] == parts
    body[flip[0] % len(body)] = flip[1]
    try:
        result = _split(bytes(body[: len(body) - cut % len(body)]))
    except PhiserveError as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert 1 <= len(result) <= 16
