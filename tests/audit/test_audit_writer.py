"""The writer: group commit under concurrency, durability without close, crash recovery."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit import fsio
from phiserve.audit.segments import DATA_START, scan_frames
from phiserve.audit.writer import AuditWriter
from phiserve.errors import AuditUnavailable, IntegrityError
from tests.audit.conftest import FlakyProvider, make_event
from tests.audit.helpers import frames_of, read_trail, segment_paths, write_frames

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_group_commit_many_concurrent_appends(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory(segment_max_bytes=256 * 1024)
    per_worker, workers = 25, 64

    async def worker(w: int) -> list[int]:
        seqs = []
        for n in range(per_worker):
            record = await writer.append(make_event(request_id=f"w{w}-{n}"))
            seqs.append(record.seq)
        return seqs

    async def run() -> list[list[int]]:
        return await asyncio.gather(*(worker(w) for w in range(workers)))

    results = asyncio.run(run())
    total = per_worker * workers
    every = sorted(s for seqs in results for s in seqs)
    assert every == list(range(1, total + 1))  # each append got its own, contiguous seq
    for seqs in results:
        assert seqs == sorted(seqs)  # a worker's awaited appends are in its order
    # Group commit: far fewer write+fsync rounds than records.
    assert writer.stats.records == total
    assert writer.stats.commits < total / 4, writer.stats
    assert writer.stats.largest_batch > 8

    # Durable before close(): read back while the writer is still running (as after a crash).
    report, stored = read_trail(audit_dir, provider)
    assert report.ok, report.problem
    assert [r["seq"] for r in stored] == list(range(1, total + 1))
    assert report.streams[0].open_tail
    writer.close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


def test_each_append_is_on_disk_when_it_returns(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory()

    async def run() -> None:
        for _ in range(5):
            record = await writer.append(make_event())
            _, stored = read_trail(audit_dir, provider)
            assert stored[-1]["mac"] == record.mac

    asyncio.run(run())


def test_appends_go_through_a_synchronous_data_descriptor(
    writer_factory: Callable[..., AuditWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable on return: every append is a write on an ``O_DSYNC`` descriptor, nothing else."""
    writer = writer_factory()
    writer.append_sync(make_event())  # the segment is open
    seen: list[int] = []
    real_pwrite = fsio._os_pwrite

    def recording_pwrite(fd: int, data: bytes | memoryview, offset: int) -> int:
        seen.append(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DSYNC)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(fsio, "_os_pwrite", recording_pwrite)
    for _ in range(3):
        writer.append_sync(make_event())
    writer.close()
    assert seen[:3] == [os.O_DSYNC] * 3


def test_fsync_per_record_mode_is_one_commit_per_record(
    writer_factory: Callable[..., AuditWriter],
) -> None:
    writer = writer_factory(max_batch=1)

    async def run() -> None:
        await asyncio.gather(*(writer.append(make_event()) for _ in range(50)))

    asyncio.run(run())
    assert writer.stats.commits == 50


def test_append_after_close_fails_closed(writer_factory: Callable[..., AuditWriter]) -> None:
    writer = writer_factory()
    writer.close()
    with pytest.raises(AuditUnavailable):
        writer.append_sync(make_event())
    assert not writer.healthy


def test_close_writes_what_is_pending_then_seals(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory()

    async def run() -> list[int]:
        tasks = [asyncio.ensure_future(writer.append(make_event())) for _ in range(200)]
        await asyncio.sleep(0)
        await asyncio.to_thread(writer.close)
        return [r.seq for r in await asyncio.gather(*tasks)]

    assert sorted(asyncio.run(run())) == list(range(1, 201))
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok and len(stored) == 200


def _start_child(
    audit_dir: Path, kek_file: Path, prefix: str = "", segment_bytes: int = 64 * 1024
) -> subprocess.Popen[str]:
    # 64 KiB segments rotate every ~100 records, so the crash tests cross segment boundaries.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [str(audit_dir), str(kek_file), "64", prefix, str(segment_bytes)]
    return subprocess.Popen(
        [sys.executable, "-m", "tests.audit.crash_child", *args],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("kill_after", [300, 1500])
def test_sigkill_mid_load_loses_no_acknowledged_record(
    audit_dir: Path, kek_file: Path, provider: FlakyProvider,
    writer_factory: Callable[..., AuditWriter], caplog: pytest.LogCaptureFixture,
    kill_after: int,
) -> None:  # fmt: skip
    acked: dict[str, int] = {}
    for _round in range(2):  # crash, restart, crash again: recovery composes
        child = _start_child(audit_dir, kek_file, prefix=f"run{_round}-")
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            while len(acked) < kill_after * (_round + 1):
                _, request_id, seq = child.stdout.readline().split()
                acked[request_id] = int(seq)
            os.kill(child.pid, signal.SIGKILL)  # mid-load: dozens of appends in flight
        finally:
            _stop(child)
        # Whatever was acknowledged is there, before any recovery.
        report, stored = read_trail(audit_dir, provider)
        on_disk = {r["request_id"]: r["seq"] for r in stored}
        assert all(on_disk.get(rid) == seq for rid, seq in acked.items())

    # The kill may land mid-batch, between batches, or mid-rotation after a seal was durable
    # (then nothing is open and there is nothing to report); an open tail must be reported.
    open_tail = read_trail(audit_dir, provider)[0].streams[0].open_tail
    with caplog.at_level(logging.WARNING, logger="phiserve.audit"):
        writer = writer_factory()  # restart: seals an open tail, loudly
    reported = [m for m in caplog.messages if "left open" in m or "torn tail" in m]
    assert len(reported) == (1 if open_tail else 0)
    writer.append_sync(make_event(request_id="after-restart"))
    writer.close()

    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert report.streams[0].recovered_seals <= 2
    seqs = [r["seq"] for r in stored]
    assert seqs == list(range(1, len(stored) + 1))  # no duplicate, no reordering, no gap
    ids = [r["request_id"] for r in stored]
    assert len(ids) == len(set(ids))
    on_disk = {r["request_id"]: r["seq"] for r in stored}
    assert all(on_disk[rid] == seq for rid, seq in acked.items())
    assert ids[-1] == "after-restart"


def _stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _crash_with_records(audit_dir: Path, kek_file: Path, count: int) -> None:
    # One segment for the whole run: the tail tests damage the open segment, and with rotation
    # the kill could land between sealing one segment and creating the next.
    child = _start_child(audit_dir, kek_file, segment_bytes=64 * 1024 * 1024)
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        for _ in range(count):
            child.stdout.readline()
    finally:
        _stop(child)


def test_torn_tail_is_reported_cut_and_sealed(
    audit_dir: Path, kek_file: Path, provider: FlakyProvider,
    writer_factory: Callable[..., AuditWriter], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _crash_with_records(audit_dir, kek_file, 50)
    _, before = read_trail(audit_dir, provider)
    last = segment_paths(audit_dir)[-1]
    # A crash mid-write: the first 37 bytes of a frame made it to disk.
    _, frames = frames_of(last)
    with last.open("ab") as fh:
        fh.write(frames[0][:37])

    report, _ = read_trail(audit_dir, provider)
    assert not report.ok and "torn tail: 37 bytes" in str(report.problem)  # not accepted

    with caplog.at_level(logging.WARNING, logger="phiserve.audit"):
        writer = writer_factory()
    (line,) = [m for m in caplog.messages if "torn tail" in m]
    assert "37 bytes" in line and f"seq {len(before)}" in line
    writer.append_sync(make_event())
    writer.close()

    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert [r["mac"] for r in stored[: len(before)]] == [r["mac"] for r in before]
    assert len(stored) == len(before) + 1
    assert report.streams[0].recovered_seals == 1
    scan = scan_frames(last.read_bytes())
    assert scan.torn_bytes == 0


def test_zero_filled_tail_counts_as_torn(
    audit_dir: Path, kek_file: Path, provider: FlakyProvider,
    writer_factory: Callable[..., AuditWriter],
) -> None:  # fmt: skip
    _crash_with_records(audit_dir, kek_file, 10)
    last = segment_paths(audit_dir)[-1]
    with last.open("ab") as fh:
        fh.write(b"\0" * 4096)  # file extended, data never written (power loss)
    writer_factory().close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


def test_final_frame_never_fully_written_is_torn(
    audit_dir: Path, kek_file: Path, provider: FlakyProvider,
    writer_factory: Callable[..., AuditWriter], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    _crash_with_records(audit_dir, kek_file, 20)
    _, before = read_trail(audit_dir, provider)
    last = segment_paths(audit_dir)[-1]
    head, frames = frames_of(last)
    # Power loss: the file's length reached the disk, the end of the last frame did not.
    frames[-1] = frames[-1][:-100] + b"\0" * 100
    write_frames(last, head, frames)
    with last.open("ab") as fh:
        fh.write(b"\0" * 3000)

    report, _ = read_trail(audit_dir, provider)
    assert report.problem is not None and report.problem.kind == "torn"
    with caplog.at_level(logging.WARNING, logger="phiserve.audit"):
        writer_factory().close()
    assert any("torn tail" in m for m in caplog.messages)
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert [r["mac"] for r in stored] == [r["mac"] for r in before[:-1]]


def test_tampered_tail_is_not_laundered_by_recovery(
    audit_dir: Path, kek_file: Path, provider: FlakyProvider,
    writer_factory: Callable[..., AuditWriter],
) -> None:  # fmt: skip
    _crash_with_records(audit_dir, kek_file, 20)
    last = segment_paths(audit_dir)[-1]
    head, frames = frames_of(last)
    assert len(frames) >= 2
    edited = bytearray(frames[-2])  # a complete frame with a good frame after it, edited
    edited[40] ^= 1
    frames[-2] = bytes(edited)
    write_frames(last, head, frames)
    with pytest.raises(IntegrityError, match="cannot be resumed"):
        writer_factory()


def test_stray_segment_creation_is_cleaned_up(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer_factory().close()
    stray = audit_dir / "server" / "seg-00000002.pal.tmp"
    stray.write_bytes(b"\0" * DATA_START)  # a crash during segment creation
    writer = writer_factory()
    writer.append_sync(make_event())
    writer.close()
    assert not stray.exists()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok


def test_healthy_reflects_the_sink(writer_factory: Callable[..., AuditWriter]) -> None:
    writer = writer_factory()
    deadline = time.monotonic() + 5
    while not writer.healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.healthy
    assert writer.body_key is not None and len(writer.body_key) == 32
