"""Verification of an audit trail: every segment, every frame, the whole chain of every stream.

The verifier reads what the writer wrote and stops at the first thing that is not exactly that:

* a frame edited, deleted, reordered or moved (AES-GCM authentication with the frame's segment
  identity and position as associated data; a misplaced frame is located to say which);
* a record whose sequence number, previous MAC or MAC does not follow (HMAC chain);
* a segment truncated (a non-final segment without its seal frame, or a partial frame),
  swapped or renamed (the header names its own index), missing (index gap, or the next
  segment's header does not continue the previous segment's last MAC), or foreign (other
  trail, other stream, or written under another audit key: a replaced key file);
* a stream missing from the folder or absent from the key file's MAC-protected stream list.

Limits (inherent to any self-contained trail): removing the newest records of a stream's *open*
final segment, or its newest whole segments, is indistinguishable from a trail that simply ended
there. The stdout mirror carries each record's MAC to an external log, which anchors the tail;
``require_sealed`` additionally refuses an unsealed final segment for archived trails.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phiserve.audit.chain import ChainState, genesis_mac, record_mac, seal_mac
from phiserve.audit.keys import AuditKeys, load_keys, streams_on_disk
from phiserve.audit.segments import (
    DATA_START,
    RawFrame,
    Scan,
    SegmentFormatError,
    SegmentHeader,
    list_segments,
    locate_frame,
    open_frame,
    parse_header,
    scan_frames,
    segment_name,
)
from phiserve.crypto.base import KeyProvider
from phiserve.errors import IntegrityError

# How long to wait before re-reading a final segment that ends inside a frame (a live write).
LIVE_TAIL_RECHECK_S = 0.2

ProblemKind = Literal["torn", "integrity", "missing", "unsealed", "key"]
RecordSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Problem:
    """The first thing found broken, with where it is."""

    kind: ProblemKind
    stream: str | None
    segment: int | None
    message: str
    frame: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        where = []
        if self.stream is not None:
            where.append(f"stream {self.stream}")
        if self.segment is not None:
            where.append(f"segment {self.segment}")
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        if self.seq is not None:
            where.append(f"record seq {self.seq}")
        return f"{', '.join(where) or 'trail'}: {self.message}"


@dataclass(slots=True)
class SegmentResult:
    """What one segment held, up to its first problem."""

    index: int
    header: SegmentHeader | None = None
    scan: Scan | None = None
    data_key: bytes | None = None
    state: ChainState | None = None
    records: int = 0
    frames: int = 0  # frames that verified
    good_end: int = DATA_START  # offset just past the last frame that verified
    sealed: bool = False
    recovered: bool = False
    first_time: str | None = None
    last_time: str | None = None
    problem: Problem | None = None


@dataclass(slots=True)
class StreamSummary:
    """Totals of one stream."""

    name: str
    segments: int = 0
    records: int = 0
    last_seq: int = 0
    recovered_seals: int = 0
    open_tail: bool = False
    first_time: str | None = None
    last_time: str | None = None


@dataclass(slots=True)
class TrailReport:
    """The verifier's result: ``problem`` is ``None`` when the whole trail checks out."""

    directory: Path
    streams: list[StreamSummary] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        """Whether every stream verified."""
        return self.problem is None

    @property
    def records(self) -> int:
        """Records verified across all streams."""
        return sum(s.records for s in self.streams)


def check_segment(
    path: Path,
    *,
    stream: str,
    index: int,
    keys: AuditKeys,
    provider: KeyProvider,
    expect: ChainState | None,
    on_record: RecordSink | None = None,
) -> SegmentResult:
    """Check one segment file against the trail's keys and the chain state before it.

    ``expect`` is the state after the previous segment; ``None`` takes the header's own links
    (crash recovery of the final segment). Raises :class:`KeyProviderError` when the key
    provider cannot answer: that is an outage, not evidence of tampering.
    """
    res = SegmentResult(index=index)

    def fail(kind: ProblemKind, message: str, frame: int | None = None) -> SegmentResult:
        seq = res.state.seq + 1 if res.state is not None and frame is not None else None
        res.problem = Problem(kind, stream, index, message, frame, seq)
        return res

    data = path.read_bytes()
    if len(data) < DATA_START:
        return fail("integrity", f"file ends inside the segment header ({len(data)} bytes; "
                    "truncated)")  # fmt: skip
    try:
        header = parse_header(data)
    except SegmentFormatError as exc:
        return fail("integrity", exc.message)
    res.header = header
    if header.trail != keys.trail_id:
        return fail("key", "segment belongs to another audit trail "
                    "(audit key file replaced, or segment copied in)")  # fmt: skip
    if header.key_fp != keys.fingerprint:
        return fail("key", "segment was written under a different audit key "
                    "(audit key file replaced?)")  # fmt: skip
    if header.stream != stream:
        return fail("integrity", f"segment belongs to stream {header.stream!r} (moved?)")
    if header.index != index:
        return fail("integrity", f"file {path.name} holds segment {header.index} "
                    "(segments swapped or renamed)")  # fmt: skip
    if expect is None:
        res.state = ChainState(header.first_seq - 1, header.prev_mac)
    else:
        res.state = expect
        prev_index = index - 1 if index > 1 else None
        if (header.prev_index, header.first_seq, header.prev_mac) != (
            prev_index,
            expect.seq + 1,
            expect.mac,
        ):
            return fail("missing", "segment does not continue the chain of the segment before "
                        "it (a segment was deleted, swapped or replaced)")  # fmt: skip
    try:
        res.data_key = provider.unwrap(header.wrapped, header.key_context())
    except IntegrityError:
        return fail("integrity", "segment data key does not unwrap (header edited or moved)")
    aead = AESGCM(res.data_key)
    res.scan = scan = scan_frames(data)
    state = res.state
    for frame in scan.frames:
        if res.sealed:
            return fail("integrity", "data after the seal frame", frame.index)
        try:
            plain = open_frame(aead, header, frame.index, frame.payload)
        except IntegrityError:
            if _never_written(data, frame, scan):
                return fail("torn", f"torn tail: {scan.size - frame.offset} bytes from frame "
                            f"{frame.index} on were never fully written (zero-filled; a crash "
                            "mid-write not yet recovered)", frame.index)  # fmt: skip
            origin = locate_frame(aead, header, frame.index, frame.payload)
            if origin is None:
                return fail("integrity", "frame failed authentication (edited or corrupted)",
                            frame.index)  # fmt: skip
            return fail("integrity", f"frame written as frame {origin} found at position "
                        f"{frame.index} (frames deleted or reordered)", frame.index)  # fmt: skip
        try:
            item = json.loads(plain)
            kind = item["kind"]
        except (ValueError, KeyError, TypeError):
            return fail("integrity", "frame content is not an audit record", frame.index)
        if kind == "record":
            problem = _check_record(keys, state, item)
            if problem:
                return fail("integrity", problem, frame.index)
            state = res.state = ChainState(item["seq"], item["mac"])
            res.records += 1
            res.first_time = res.first_time or item["time"]
            res.last_time = item["time"]
            if on_record is not None:
                on_record(stream, item)
        elif kind == "seal":
            problem = _check_seal(keys, state, res.records, index, item)
            if problem:
                return fail("integrity", problem, frame.index)
            res.sealed, res.recovered = True, bool(item.get("recovered"))
        else:
            return fail("integrity", f"unknown frame kind {kind!r}", frame.index)
        res.frames, res.good_end = res.frames + 1, frame.end
    if scan.corrupt_at is not None:
        return fail("integrity", f"unreadable frame length at byte {scan.corrupt_at} "
                    "(corrupted)", len(scan.frames))  # fmt: skip
    if scan.torn_bytes:
        tail_kind: ProblemKind = "integrity" if res.sealed else "torn"
        return fail(tail_kind, f"torn tail: {scan.torn_bytes} bytes after the last complete frame "
                    "(a crash mid-write not yet recovered, or truncation)", len(scan.frames))  # fmt: skip
    return res


def _never_written(data: bytes, frame: RawFrame, scan: Scan) -> bool:
    """Whether a frame that failed authentication is the zero-filled end of an interrupted write.

    After a crash (power loss in particular) a file can be longer than what reached the disk,
    the rest reading as zeros. Only the final complete frame qualifies, and only if it ends in
    zeros: calling it torn lets recovery cut it off loudly, which gives an editor nothing that
    truncating the open tail would not.
    """
    last = scan.frames[-1]
    return frame is last and scan.corrupt_at is None and data[frame.end - 1] == 0


def _check_record(keys: AuditKeys, state: ChainState, item: dict[str, Any]) -> str | None:
    try:
        seq, prev, mac = int(item["seq"]), str(item["prev_mac"]), str(item["mac"])
        if seq != state.seq + 1:
            return f"sequence number {seq} where {state.seq + 1} was expected (out of order)"
        if prev != state.mac:
            return "previous-MAC link broken (a record was deleted or reordered)"
        if not hmac.compare_digest(record_mac(keys.chain_key, prev, seq, item), mac):
            return "record MAC mismatch (record edited)"
    except (KeyError, TypeError, ValueError):
        return "record is malformed"
    return None


def _check_seal(
    keys: AuditKeys, state: ChainState, records: int, index: int, item: dict[str, Any]
) -> str | None:
    try:
        if not hmac.compare_digest(seal_mac(keys.chain_key, item), str(item["mac"])):
            return "seal MAC mismatch (seal edited)"
        if item["segment"] != index or item["count"] != records:
            return f"seal counts {item['count']} records but {records} were found"
        if item["last_seq"] != state.seq or item["last_mac"] != state.mac:
            return "seal does not match the last record (records removed or added)"
    except (KeyError, TypeError):
        return "seal frame is malformed"
    return None


def _skip_first(count: int, sink: RecordSink | None) -> RecordSink | None:
    if sink is None:
        return None
    seen = 0

    def skipping(stream: str, record: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen > count:
            sink(stream, record)

    return skipping


def check_stream(
    audit_dir: Path,
    stream: str,
    keys: AuditKeys,
    provider: KeyProvider,
    *,
    on_record: RecordSink | None = None,
) -> tuple[StreamSummary, Problem | None]:
    """Check every segment of one stream in order, and the links between them."""
    summary = StreamSummary(stream)
    stream_dir = audit_dir / stream
    segments = list_segments(stream_dir) if stream_dir.is_dir() else []
    if not segments:
        return summary, Problem("missing", stream, None, "stream has no segments (deleted?)")
    state = ChainState(0, genesis_mac(keys.chain_key, keys.trail_id, stream))
    for position, (index, path) in enumerate(segments, start=1):
        if index != position:
            gap = f"{position}" if index == position + 1 else f"{position}..{index - 1}"
            return summary, Problem("missing", stream, position,
                                    f"segment {gap} missing (deleted or renamed)")  # fmt: skip
        res = check_segment(path, stream=stream, index=index, keys=keys, provider=provider,
                            expect=state, on_record=on_record)  # fmt: skip
        if res.problem is not None and res.problem.kind == "torn" and position == len(segments):
            # A running writer may be mid-write: look once more before calling the tail torn,
            # passing on only the records not already passed on.
            time.sleep(LIVE_TAIL_RECHECK_S)
            res = check_segment(path, stream=stream, index=index, keys=keys, provider=provider,
                                expect=state, on_record=_skip_first(res.records, on_record))  # fmt: skip
        summary.segments += 1
        summary.records += res.records
        summary.first_time = summary.first_time or res.first_time
        summary.last_time = res.last_time or summary.last_time
        summary.recovered_seals += res.recovered
        if res.problem is not None:
            return summary, res.problem
        assert res.state is not None
        state = res.state
        summary.last_seq = state.seq
        if not res.sealed:
            if position != len(segments):
                return summary, Problem("unsealed", stream, index, f"{segment_name(index)} has no "
                                        "seal frame but later segments exist (truncated)")  # fmt: skip
            summary.open_tail = True
    return summary, None


def verify_trail(
    audit_dir: Path,
    provider: KeyProvider,
    *,
    require_sealed: bool = False,
    on_record: RecordSink | None = None,
) -> TrailReport:
    """Verify a whole audit folder; the report names the first problem, if any.

    ``on_record(stream, record)`` receives every record that verified, in order (export uses
    it). With ``require_sealed`` an open final segment is a problem too (for archived trails).
    """
    report = TrailReport(audit_dir)
    try:
        keys = load_keys(audit_dir, provider)
    except IntegrityError as exc:
        report.problem = Problem("key", None, None, exc.message)
        return report
    on_disk = set(streams_on_disk(audit_dir))
    for stream in sorted(on_disk | set(keys.streams)):
        summary, problem = check_stream(audit_dir, stream, keys, provider, on_record=on_record)
        report.streams.append(summary)
        if problem is None and stream not in keys.streams:
            problem = Problem("integrity", stream, None,
                              "stream is not listed in the audit key file")  # fmt: skip
        if problem is None and require_sealed and summary.open_tail:
            problem = Problem("unsealed", stream, summary.segments,
                              "final segment is not sealed (writer running, crashed, or "
                              "tail truncated)")  # fmt: skip
        if problem is not None:
            report.problem = problem
            return report
    return report


def read_trail(
    audit_dir: Path, provider: KeyProvider, *, require_sealed: bool = False
) -> tuple[TrailReport, list[dict[str, Any]]]:
    """Verify the trail and return every record that verified, in stream then sequence order.

    Each record dict carries its ``stream`` too. For tests and tools (an end-to-end crash test
    matches response request ids against it); ``export`` streams instead of collecting.
    """
    records: list[dict[str, Any]] = []
    report = verify_trail(
        audit_dir,
        provider,
        require_sealed=require_sealed,
        on_record=lambda stream, record: records.append({**record, "stream": stream}),
    )
    return report, records
