"""New ``bytes`` objects filled in place, on transparent huge pages where the OS offers them.

Why this exists: onnxruntime takes an in-memory model only as ``bytes``, and
``AESGCM.decrypt`` builds its result by zero-filling a fresh allocation 4 KiB page by page. For a
100 MiB model those page faults cost ~40 ms, seven times the AES-GCM work itself. Here the
plaintext is decrypted straight into an uninitialised ``bytes`` object whose pages are advised as
huge pages (``madvise(MADV_HUGEPAGE)``), which takes the faults to ~5 ms without changing how the
rest of the process allocates memory. (On a virtual machine whose host reclaims the guest's free
memory, as on the benchmark machine, a huge page the host took back costs far more to fault in:
there a load right after another process freed a lot of memory can take ~150 ms longer.)

Writing into a ``bytes`` object is what C code does with ``PyBytes_FromStringAndSize(NULL, n)``
before the object is shared; :func:`fill_new_bytes` keeps to that: the object is new, no one else
holds it, and the writable view is released before it is returned.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from pathlib import Path

_new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
_new_bytes.restype = ctypes.py_object
_new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_address = ctypes.pythonapi.PyBytes_AsString
_bytes_address.restype = ctypes.c_void_p
_bytes_address.argtypes = (ctypes.py_object,)

_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
_libc = ctypes.CDLL(None, use_errno=True)
_madvise = getattr(_libc, "madvise", None)
if _madvise is not None:
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _madvise.restype = ctypes.c_int


def _huge_page_size() -> int:
    try:
        return int(Path("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 2 * 2**20


HUGE_PAGE = _huge_page_size()


def advise_huge_pages(address: int, size: int) -> bool:
    """Ask for huge pages on the whole huge pages inside ``[address, address + size)``.

    Advice only: returns whether the kernel took it (False on other systems, with THP off, or
    when the range holds no whole huge page).
    """
    start = -(-address // HUGE_PAGE) * HUGE_PAGE
    end = (address + size) // HUGE_PAGE * HUGE_PAGE
    if _madvise is None or _MADV_HUGEPAGE is None or end <= start:
        return False
    return _madvise(start, end - start, _MADV_HUGEPAGE) == 0


def fill_new_bytes(size: int, fill: Callable[[memoryview], None]) -> bytes:
    """A new ``bytes`` of ``size`` whose contents ``fill`` writes through a writable view.

    ``fill`` must write every byte. If it raises, whatever it wrote is zeroed before the
    exception propagates, so a half-written buffer (unauthenticated plaintext, say) does not
    linger in freed memory.
    """
    if size < 0:
        raise ValueError("size must not be negative")
    if size == 0:
        fill(memoryview(bytearray()))
        return b""
    # size >= 1 with a NULL source always allocates a new object (never a cached singleton).
    result: bytes = _new_bytes(None, size)
    address = _bytes_address(result)
    advise_huge_pages(address, size)
    window = (ctypes.c_char * size).from_address(address)
    try:
        with memoryview(window) as raw, raw.cast("B") as view:
            fill(view)
    except BaseException:
        ctypes.memset(address, 0, size)
        raise
    return result
