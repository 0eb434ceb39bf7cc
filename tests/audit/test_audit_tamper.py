"""Tamper evidence: every kind of edit to a trail is found by ``verify``, and named."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit.keys import KEY_FILE
from phiserve.audit.segments import SLOT_SIZE, scan_frames
from phiserve.audit.writer import AuditWriter
from tests.audit.conftest import FlakyProvider, make_event
from tests.audit.helpers import frames_of, read_trail, segment_paths, write_frames

RECORDS = 24


@pytest.fixture
def trail(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> Path:
    """A closed trail of 24 records in at least four sealed segments, verified intact."""
    writer = writer_factory(segment_max_bytes=12 * 1024)
    for _ in range(RECORDS):
        writer.append_sync(make_event())
    writer.close()
    assert len(segment_paths(audit_dir)) >= 4
    report, stored = read_trail(audit_dir, provider, require_sealed=True)
    assert report.ok and len(stored) == RECORDS
    return audit_dir


def problem_of(trail: Path, provider: FlakyProvider) -> str:
    report, _ = read_trail(trail, provider)
    assert not report.ok, "tampering went unnoticed"
    return str(report.problem)


def test_edit_one_byte_in_a_frame(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[1]
    head, frames = frames_of(path)
    frame = bytearray(frames[2])
    frame[40] ^= 0x01
    frames[2] = bytes(frame)
    write_frames(path, head, frames)
    problem = problem_of(trail, provider)
    assert "segment 2, frame 2" in problem and "failed authentication" in problem


def test_delete_a_frame(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[1]
    head, frames = frames_of(path)
    del frames[1]
    write_frames(path, head, frames)
    problem = problem_of(trail, provider)
    assert "segment 2, frame 1" in problem
    assert "written as frame 2 found at position 1 (frames deleted or reordered)" in problem


def test_reorder_two_frames(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[2]
    head, frames = frames_of(path)
    frames[0], frames[1] = frames[1], frames[0]
    write_frames(path, head, frames)
    problem = problem_of(trail, provider)
    assert "segment 3, frame 0" in problem and "reordered" in problem


def test_duplicate_a_frame(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[0]
    head, frames = frames_of(path)
    frames.insert(1, frames[0])
    write_frames(path, head, frames)
    assert "reordered" in problem_of(trail, provider)


def test_truncate_a_segment_at_a_frame_boundary(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[1]
    head, frames = frames_of(path)
    write_frames(path, head, frames[:-2])  # seal and last record gone
    problem = problem_of(trail, provider)
    assert "segment 2" in problem and "no seal frame" in problem and "truncated" in problem


def test_truncate_a_segment_inside_a_frame(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    problem = problem_of(trail, provider)
    assert "segment 2" in problem and "torn tail" in problem


def test_truncate_the_final_segment_inside_a_frame(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    assert "torn tail" in problem_of(trail, provider)


def test_remove_the_seal_of_the_final_segment(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[-1]
    head, frames = frames_of(path)
    write_frames(path, head, frames[:-1])
    report, _ = read_trail(trail, provider)
    assert report.ok and report.streams[0].open_tail  # looks like a running writer...
    report, _ = read_trail(trail, provider, require_sealed=True)
    assert not report.ok and "not sealed" in str(report.problem)  # ...unless archived


def test_swap_two_segments(trail: Path, provider: FlakyProvider) -> None:
    second, third = segment_paths(trail)[1:3]
    a, b = second.read_bytes(), third.read_bytes()
    second.write_bytes(b)
    third.write_bytes(a)
    problem = problem_of(trail, provider)
    assert "seg-00000002.pal holds segment 3 (segments swapped or renamed)" in problem


def test_delete_a_middle_segment(trail: Path, provider: FlakyProvider) -> None:
    segment_paths(trail)[1].unlink()
    assert "segment 2 missing" in problem_of(trail, provider)


def test_delete_the_first_segment(trail: Path, provider: FlakyProvider) -> None:
    segment_paths(trail)[0].unlink()
    assert "segment 1 missing" in problem_of(trail, provider)


def test_delete_a_segment_and_renumber_the_rest(trail: Path, provider: FlakyProvider) -> None:
    paths = segment_paths(trail)
    paths[1].unlink()
    for path in paths[2:]:
        index = int(path.name[4:12])
        path.rename(path.with_name(f"seg-{index - 1:08d}.pal"))
    assert "segments swapped or renamed" in problem_of(trail, provider)


def test_replace_a_segment_with_one_from_another_trail(
    trail: Path, provider: FlakyProvider, writer_factory: Callable[..., AuditWriter],
    tmp_path: Path,
) -> None:  # fmt: skip
    other = tmp_path / "other-trail"
    writer = writer_factory(other, segment_max_bytes=12 * 1024)
    for _ in range(RECORDS):
        writer.append_sync(make_event())
    writer.close()
    shutil.copy(segment_paths(other)[1], segment_paths(trail)[1])
    assert "another audit trail" in problem_of(trail, provider)


def test_replace_the_audit_key_file(
    trail: Path, provider: FlakyProvider, writer_factory: Callable[..., AuditWriter],
    tmp_path: Path,
) -> None:  # fmt: skip
    other = tmp_path / "other-trail"
    writer_factory(other).close()
    shutil.copy(other / KEY_FILE, trail / KEY_FILE)
    problem = problem_of(trail, provider)
    assert "audit key file replaced" in problem


def test_replace_the_key_file_keeping_the_trail_id(
    trail: Path, provider: FlakyProvider, writer_factory: Callable[..., AuditWriter],
    tmp_path: Path,
) -> None:  # fmt: skip
    # An attacker who can call the KEK mints a new root key and rewrites the file consistently.
    from phiserve.audit import keys as keys_module

    original = json.loads((trail / KEY_FILE).read_text())
    other = tmp_path / "other-trail"
    writer_factory(other).close()
    forged = json.loads((other / KEY_FILE).read_text())
    root = provider.unwrap(
        keys_module.WrappedKey.from_json(forged["wrapped"]),
        keys_module.root_context(forged["trail"]),
    )
    forged["trail"] = original["trail"]
    forged["streams"] = original["streams"]
    forged["wrapped"] = provider.wrap(root, keys_module.root_context(original["trail"])).to_json()
    new_keys = keys_module.AuditKeys.from_root(original["trail"], root, ())
    forged["mac"] = keys_module._file_mac(new_keys.file_key, forged)
    (trail / KEY_FILE).write_text(json.dumps(forged))
    assert "audit key file replaced" in problem_of(trail, provider)


def test_drop_a_stream_from_the_key_file(trail: Path, provider: FlakyProvider) -> None:
    data = json.loads((trail / KEY_FILE).read_text())
    data["streams"] = []
    (trail / KEY_FILE).write_text(json.dumps(data))
    assert "audit key file was modified" in problem_of(trail, provider)


def test_delete_a_whole_stream(trail: Path, provider: FlakyProvider) -> None:
    shutil.rmtree(trail / "server")
    assert "stream server: stream has no segments" in problem_of(trail, provider)


def test_edit_a_header_and_fix_its_checksum(trail: Path, provider: FlakyProvider) -> None:
    import hashlib
    import struct

    path = segment_paths(trail)[1]
    data = bytearray(path.read_bytes())
    generation, length = struct.unpack(">II", data[8:16])
    body = json.loads(data[48 : 48 + length])
    body["created"] = "2001-01-01T00:00:00.000000Z"  # a field frames are bound to
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    prefix = struct.pack(">II", generation, len(raw))
    slot = (b"PHIAUDH1" + prefix + hashlib.sha256(prefix + raw).digest() + raw).ljust(
        SLOT_SIZE, b"\0"
    )
    data[:SLOT_SIZE] = slot
    path.write_bytes(bytes(data))
    assert "failed authentication" in problem_of(trail, provider)


def test_move_a_wrapped_key_between_segments(trail: Path, provider: FlakyProvider) -> None:
    import hashlib
    import struct

    paths = segment_paths(trail)

    def header_json(path: Path) -> dict:
        data = path.read_bytes()
        _, length = struct.unpack(">II", data[8:16])
        return json.loads(data[48 : 48 + length])

    donor = header_json(paths[0])
    target = paths[1]
    body = header_json(target)
    body["wrapped_key"], body["key_id"] = donor["wrapped_key"], donor["key_id"]
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    prefix = struct.pack(">II", 1, len(raw))
    slot = (b"PHIAUDH1" + prefix + hashlib.sha256(prefix + raw).digest() + raw).ljust(
        SLOT_SIZE, b"\0"
    )
    data = bytearray(target.read_bytes())
    data[:SLOT_SIZE] = slot
    target.write_bytes(bytes(data))
    assert "data key does not unwrap" in problem_of(trail, provider)


def test_untouched_trail_verifies_and_frames_are_whole(
    trail: Path, provider: FlakyProvider
) -> None:
    for path in segment_paths(trail):
        scan = scan_frames(path.read_bytes())
        assert scan.torn_bytes == 0 and scan.corrupt_at is None
    assert read_trail(trail, provider, require_sealed=True)[0].ok


def test_truncate_a_segment_inside_its_header(trail: Path, provider: FlakyProvider) -> None:
    path = segment_paths(trail)[2]
    path.write_bytes(path.read_bytes()[:5000])
    assert "segment 3: file ends inside the segment header" in problem_of(trail, provider)


def test_verify_tolerates_a_write_in_flight_on_a_live_tail(
    trail: Path, provider: FlakyProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from phiserve.audit import verify

    path = segment_paths(trail)[-1]
    head, frames = frames_of(path)
    whole = b"".join(frames[:-1])  # reopen the tail: drop the seal ...
    write_frames(path, head, frames[:-1])
    with path.open("ab") as fh:
        fh.write(frames[-1][:10])  # ... and start writing it again, as a live writer would

    def finish() -> None:
        path.write_bytes(head + whole + frames[-1])

    monkeypatch.setattr(verify, "LIVE_TAIL_RECHECK_S", 0.3)
    threading.Timer(0.1, finish).start()
    report, stored = read_trail(trail, provider)
    assert report.ok, report.problem
    assert len(stored) == RECORDS  # nothing passed on twice
