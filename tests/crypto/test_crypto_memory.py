"""New bytes filled in place, on huge pages where the kernel offers them."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from phiserve.crypto.memory import HUGE_PAGE, fill_new_bytes

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _write(pattern: bytes):
    def fill(view: memoryview) -> None:
        view[:] = pattern

    return fill


def test_fill_new_bytes_returns_what_was_written() -> None:
    pattern = bytes(range(256)) * 4096 + b"xyz"
    result = fill_new_bytes(len(pattern), _write(pattern))
    assert type(result) is bytes
    assert result == pattern
    assert hash(result) == hash(bytes(pattern))  # no stale cached hash


def test_one_byte_results_never_overwrite_the_cached_one_byte_objects() -> None:
    first = fill_new_bytes(1, _write(b"a"))
    second = fill_new_bytes(1, _write(b"b"))
    assert (first, second) == (b"a", b"b")
    assert first is not second
    # CPython caches each one-byte bytes object; they still hold their own values.
    assert [bytes([i])[0] for i in range(256)] == list(range(256))


def test_empty_and_negative_sizes() -> None:
    assert fill_new_bytes(0, lambda view: None) == b""
    with pytest.raises(ValueError, match="negative"):
        fill_new_bytes(-1, lambda view: None)


def test_a_failing_fill_propagates_and_returns_nothing() -> None:
    seen: list[int] = []

    def fill(view: memoryview) -> None:
        view[:4] = b"half"
        seen.append(len(view))
        raise RuntimeError("authentication failed")

    with pytest.raises(RuntimeError, match="authentication failed"):
        fill_new_bytes(64, fill)
    assert seen == [64]


def _mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds ``address``."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            low, high = (int(x, 16) for x in head.split("-"))
            inside = low <= address < high
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here"
)
def test_large_buffers_are_advised_as_huge_pages() -> None:
    size = 4 * HUGE_PAGE
    result = fill_new_bytes(size, _write(b"\x01" * size))
    address = ctypes.cast(ctypes.c_char_p(result), ctypes.c_void_p).value
    assert address is not None
    mapping = _mapping_of(address + HUGE_PAGE)
    assert mapping["THPeligible"] == "1"
    assert "hg" in mapping["VmFlags"].split()  # VM_HUGEPAGE: madvise(MADV_HUGEPAGE) took
