"""Failing closed: a sink that cannot write refuses appends, the process lives, and it recovers.

Disk full is a real tmpfs of 64 KiB (``mount -t tmpfs``, root only: skipped elsewhere), and
read-only is a real read-only bind mount (``EROFS``); both are complemented by ``ENOSPC``/``EIO``
injected at the ``os.write``/``fsync`` boundary (``phiserve.audit.fsio``), which runs anywhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit import fsio
from phiserve.audit.writer import AuditWriter
from phiserve.errors import AuditUnavailable
from tests.audit.conftest import FlakyProvider, make_event, remount
from tests.audit.helpers import read_trail, segment_paths


def _fill(directory: Path) -> Path:
    """Fill the file system holding ``directory``; returns the filler to delete later."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):  # noqa: PT012 - fill until full
            while True:
                os.write(fd, b"\xaa" * 1024)
    finally:
        os.close(fd)
    return filler


async def _append_many(writer: AuditWriter, n: int) -> tuple[list[int], int]:
    results = await asyncio.gather(
        *(writer.append(make_event()) for _ in range(n)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, AuditUnavailable) for r in refused)
    return [r.seq for r in results if not isinstance(r, BaseException)], len(refused)


def test_disk_full_on_a_real_tmpfs_then_recovery(
    tiny_tmpfs: Callable[[int], Path], writer_factory: Callable[..., AuditWriter],
    provider: FlakyProvider,
) -> None:  # fmt: skip
    mount = tiny_tmpfs(64)
    audit_dir = mount / "audit"
    writer = writer_factory(audit_dir)
    acked = [writer.append_sync(make_event()).seq]
    filler = _fill(mount)

    # The last page of the segment still has room for a few records; then every append fails.
    refused = 0
    for i in range(200):
        try:
            acked.append(writer.append_sync(make_event(request_id=f"full-{i:06d}")).seq)
        except AuditUnavailable:
            refused += 1
            if refused == 3:
                break
    assert refused == 3 and len(acked) < 50
    assert not writer.healthy
    more, refused_concurrently = asyncio.run(_append_many(writer, 64))
    assert (more, refused_concurrently) == ([], 64)

    filler.unlink()  # space comes back: the next append succeeds without a restart
    later, refused_after = asyncio.run(_append_many(writer, 64))
    assert refused_after == 0 and writer.healthy
    writer.close()

    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert [r["seq"] for r in stored] == [*acked, *sorted(later)]
    assert [r["seq"] for r in stored] == list(range(1, len(acked) + 65))


def test_disk_nearly_full_partial_batch_is_cut_back(
    tiny_tmpfs: Callable[[int], Path], writer_factory: Callable[..., AuditWriter],
    provider: FlakyProvider,
) -> None:  # fmt: skip
    mount = tiny_tmpfs(64)
    audit_dir = mount / "audit"
    writer = writer_factory(audit_dir)
    filler = _fill(mount)
    os.truncate(filler, max(0, filler.stat().st_size - 8 * 1024))  # ~8 KiB free: some fit
    acked, refused = asyncio.run(_append_many(writer, 200))
    assert refused > 0
    filler.unlink()
    writer.append_sync(make_event())
    writer.close()
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem  # a partly written batch left no bytes behind
    assert len(stored) == len(acked) + 1


def test_read_only_file_system_at_start_then_writable(
    tmp_path: Path, bind_mount: Callable[[Path, bool], Path],
    writer_factory: Callable[..., AuditWriter], provider: FlakyProvider,
) -> None:  # fmt: skip
    backing = tmp_path / "backing"
    backing.mkdir()
    point = bind_mount(backing, True)
    writer = writer_factory(point / "audit")  # starts failed: EROFS, but does not raise
    assert not writer.healthy
    with pytest.raises(AuditUnavailable):
        writer.append_sync(make_event())
    remount(point, False)
    record = writer.append_sync(make_event())
    assert record.seq == 1 and writer.healthy
    writer.close()
    assert read_trail(point / "audit", provider, require_sealed=True)[0].ok


def test_permission_denied_then_recovery(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Root ignores file modes, so EACCES is injected where the segment would be created.
    real_open = os.open

    def denied(path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".pal.tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode)

    writer = writer_factory(segment_max_bytes=10 * 1024)
    writer.append_sync(make_event())
    monkeypatch.setattr(os, "open", denied)
    outcomes = []
    for _ in range(20):  # appends work until the next rotation cannot create its segment
        try:
            writer.append_sync(make_event())
            outcomes.append("ok")
        except AuditUnavailable:
            outcomes.append("refused")
    assert outcomes[0] == "ok" and outcomes[-1] == "refused"
    monkeypatch.undo()
    writer.append_sync(make_event())
    writer.close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


@pytest.mark.parametrize("fault", ["enospc-mid-write", "eio-after-write"])
def test_injected_io_faults_fail_closed_and_leave_no_partial_batch(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider,
    monkeypatch: pytest.MonkeyPatch, fault: str,
) -> None:  # fmt: skip
    writer = writer_factory()
    writer.append_sync(make_event())
    size_before = segment_paths(audit_dir)[-1].stat().st_size
    real_pwrite = fsio._os_pwrite

    def short_then_enospc(fd: int, data: bytes | memoryview, offset: int) -> int:
        if len(data) > 64:  # half the batch reaches the disk, then the disk is full
            return real_pwrite(fd, bytes(data[: len(data) // 2]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    def eio_after_write(fd: int, data: bytes | memoryview, offset: int) -> int:
        # The bytes reach the file but the O_DSYNC write cannot make them durable.
        real_pwrite(fd, data, offset)
        raise OSError(errno.EIO, "Input/output error")

    fault_fn = short_then_enospc if fault == "enospc-mid-write" else eio_after_write
    monkeypatch.setattr(fsio, "_os_pwrite", fault_fn)
    acked, refused = asyncio.run(_append_many(writer, 32))
    assert (acked, refused) == ([], 32)
    assert not writer.healthy
    assert segment_paths(audit_dir)[-1].stat().st_size == size_before  # cut back

    monkeypatch.setattr(fsio, "_os_pwrite", real_pwrite)
    acked, refused = asyncio.run(_append_many(writer, 32))
    assert refused == 0 and sorted(acked) == list(range(2, 34))
    writer.close()
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert len(stored) == 33


def test_failed_writer_answers_at_once_until_retry_interval(
    writer_factory: Callable[..., AuditWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = writer_factory(retry_interval_s=60)
    writer.append_sync(make_event())
    calls = 0

    def enospc(fd: int, data: bytes | memoryview, offset: int) -> int:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_os_pwrite", enospc)
    for _ in range(5):
        with pytest.raises(AuditUnavailable):
            writer.append_sync(make_event())
    assert calls == 1  # the sink is not hammered while it is known to be down


def test_key_provider_down_at_start_then_recovery(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    provider.down = True
    writer = writer_factory()  # no key file can be wrapped: starts failed, does not raise
    assert not writer.healthy and writer.body_key is None
    with pytest.raises(AuditUnavailable):
        writer.append_sync(make_event())
    provider.down = False
    assert writer.append_sync(make_event()).seq == 1
    assert writer.healthy and writer.body_key is not None
    writer.close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


def test_key_provider_down_on_restart_then_recovery(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer_factory().close()
    provider.down = True  # the root key cannot be unwrapped
    writer = writer_factory()
    with pytest.raises(AuditUnavailable):
        writer.append_sync(make_event())
    provider.down = False
    assert writer.append_sync(make_event()).seq == 1
    writer.close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


def test_key_provider_down_at_rotation_then_recovery(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory(segment_max_bytes=10 * 1024)
    writer.append_sync(make_event())
    provider.down = True
    acked = 1
    for _ in range(50):  # fine until the segment is full and a new data key is needed
        try:
            writer.append_sync(make_event())
        except AuditUnavailable:
            break
        acked += 1
    assert acked > 1
    assert acked < 50
    before = len(segment_paths(audit_dir))
    provider.down = False
    writer.append_sync(make_event())
    assert len(segment_paths(audit_dir)) == before + 1
    writer.close()
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert len(stored) == acked + 1
