"""Chain and segments: round trip across rotations, header slots, and KEK rotation (re-wrap)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit.keys import KEY_FILE, load_keys, rewrap
from phiserve.audit.segments import (
    NONCE_BYTES,
    SLOT_SIZE,
    NoncePool,
    read_header,
    rewrap_segment,
)
from phiserve.audit.writer import AuditWriter
from phiserve.errors import KeyProviderError
from tests.audit.conftest import FlakyProvider, make_event
from tests.audit.helpers import frames_of, read_trail, segment_paths


def test_round_trip_across_segment_rotation(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory(segment_max_bytes=16 * 1024)
    events = [make_event(status=200 + i % 3) for i in range(60)]
    records = [writer.append_sync(e) for e in events]
    writer.close()

    assert [r.seq for r in records] == list(range(1, 61))
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert len(segment_paths(audit_dir)) > 3  # rotated by size
    assert [r["request_id"] for r in stored] == [e.request_id for e in events]
    assert [r["mac"] for r in stored] == [r.mac for r in records]
    (summary,) = report.streams
    assert (summary.records, summary.last_seq, summary.open_tail) == (60, 60, False)


def test_every_frame_has_its_own_random_nonce(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    """Nonces come from the OS in blocks; across block refills none repeats."""
    writer = writer_factory()
    writer.append_sync(make_event())

    async def burst() -> None:
        await asyncio.gather(*(writer.append(make_event()) for _ in range(600)))

    asyncio.run(burst())
    writer.close()
    assert read_trail(audit_dir, provider, require_sealed=True)[0].ok
    nonces = [frame[4 : 4 + NONCE_BYTES] for path in segment_paths(audit_dir)
              for frame in frames_of(path)[1]]  # fmt: skip
    assert len(nonces) == 602  # 601 records and the seal
    assert len(set(nonces)) == len(nonces)


def test_nonce_pool_draws_blocks_and_never_repeats() -> None:
    pool = NoncePool(count=4)
    taken = [pool.take() for _ in range(1000)]
    assert {len(n) for n in taken} == {NONCE_BYTES}
    assert len(set(taken)) == 1000


def test_rotation_by_age(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    """A segment that holds records and has reached the maximum age is sealed at the next append.

    A maximum age of zero makes every such segment old enough at once, with no waiting.
    """
    writer = writer_factory(segment_max_age_s=0.0)
    for _ in range(3):
        writer.append_sync(make_event())
    writer.close()
    assert len(segment_paths(audit_dir)) == 3
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok and len(stored) == 3


def test_restart_continues_the_chain_in_a_new_segment(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    first = writer_factory()
    first.append_sync(make_event())
    first.close()
    second = writer_factory()
    record = second.append_sync(make_event())
    second.close()
    assert record.seq == 2
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok and len(stored) == 2
    assert len(segment_paths(audit_dir)) == 2
    assert read_header(segment_paths(audit_dir)[1]).prev_mac == stored[0]["mac"]


def test_nothing_in_clear_on_disk(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path
) -> None:
    writer = writer_factory()
    writer.append_sync(make_event(subject="visible-subject-name"))
    writer.close()
    for path in audit_dir.rglob("*"):
        if path.is_file():
            assert b"visible-subject-name" not in path.read_bytes()


def test_second_writer_on_the_same_stream_is_refused(
    writer_factory: Callable[..., AuditWriter],
) -> None:
    writer_factory()
    with pytest.raises(Exception, match="held by another writer"):
        writer_factory()
    other = writer_factory(stream="worker-2")  # another stream of the same trail is fine
    other.append_sync(make_event())


def test_kek_rotation_rewraps_key_file_and_every_segment(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory(segment_max_bytes=12 * 1024)
    for _ in range(20):
        writer.append_sync(make_event())
    old_kid = provider.inner.current_key_id
    provider.rotate()
    before = len(segment_paths(audit_dir))
    count = rewrap(audit_dir, provider)  # while the writer is running
    writer.append_sync(make_event())
    writer.close()
    provider.retire_others()  # the old KEK is gone for good

    assert count == 1 + before  # the key file and every segment
    assert old_kid not in (audit_dir / KEY_FILE).read_text()
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok, report.problem
    assert len(stored) == 21
    for path in segment_paths(audit_dir):
        assert read_header(path).wrapped.key_id == provider.inner.current_key_id


def test_segments_not_rewrapped_become_unreadable_after_retiring(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory()
    writer.append_sync(make_event())
    writer.close()
    provider.rotate()
    provider.retire_others()
    with pytest.raises(KeyProviderError):
        load_keys(audit_dir, provider)


def test_rewrap_alternates_header_slots_and_survives_a_torn_slot(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory()
    writer.append_sync(make_event())
    writer.close()
    (path,) = segment_paths(audit_dir)
    assert read_header(path).generation == 1
    rewrap_segment(path, provider)
    rewrap_segment(path, provider)
    assert read_header(path).generation == 3
    # A crash while writing the newer slot (here: slot 0, generation 3) leaves the other valid.
    data = bytearray(path.read_bytes())
    data[100:200] = b"\xff" * 100
    path.write_bytes(bytes(data))
    assert read_header(path).generation == 2
    assert read_trail(audit_dir, provider)[0].ok
    assert SLOT_SIZE == 4096


def test_rewrap_without_a_trail_is_a_no_op(tmp_path: Path, provider: FlakyProvider) -> None:
    assert rewrap(tmp_path / "no-audit-yet", provider) == 0
