"""Durable file primitives for the audit trail: full writes, data syncs, atomic replace, locks.

Every byte the trail writes goes through :func:`write_all` and every sync through
:func:`sync`, so tests can inject ``ENOSPC``/``EIO`` at exactly the ``os.write``/``fsync``
boundary where a real disk would fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

# Indirections patched by fault-injection tests; production code calls the os functions.
_os_write = os.write
_os_pwrite = os.pwrite
_os_sync = os.fdatasync if hasattr(os, "fdatasync") else os.fsync


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` (a short write is continued; one that writes nothing raises)."""
    view = memoryview(data)
    while view:
        n = _os_write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def write_all_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a short write is continued).

    On a descriptor opened with ``O_DSYNC`` the bytes (and the file's size) are durable when
    this returns: one system call per group commit where ``lseek``, ``write`` and ``fdatasync``
    took three. It matters on a busy server: after each call the writer thread waits to get the
    GIL (and a core) back from the event loop.
    """
    view = memoryview(data)
    while view:
        n = _os_pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view, offset = view[n:], offset + n


def sync(fd: int) -> None:
    """Make the file's data (and its size) durable."""
    _os_sync(fd)


def sync_dir(path: Path) -> None:
    """Make a folder's entries (created or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        sync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def probe_write(folder: Path, size: int = 4096) -> None:
    """Prove ``folder`` takes a durable write of ``size`` bytes now (space, permissions, mount)."""
    probe = folder / ".probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, bytes(size))
        sync(fd)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()


def ensure_dir(path: Path) -> None:
    """Create ``path`` (0700) and its parents, and make the new entry durable."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    sync_dir(path.parent)


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block."""
    fd = acquire_lock(path, blocking=blocking)
    try:
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def acquire_lock(path: Path, *, blocking: bool = True) -> int:
    """Open ``path`` and take an exclusive ``flock``; returns the descriptor that holds it.

    Raises ``BlockingIOError`` when ``blocking`` is false and another process holds the lock.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BaseException:
        os.close(fd)
        raise
    return fd


def describe(exc: BaseException) -> str:
    """A PHI-free one-line cause for logs: errno name or error type, never payload text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__} {errno.errorcode.get(exc.errno, exc.errno)}"
    message = getattr(exc, "message", None)  # PhiserveError messages are written by us
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
