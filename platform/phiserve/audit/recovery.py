"""Start-up recovery of a stream: find where its chain ends and seal a segment a crash left open.

A process killed mid-write can leave the final segment unsealed and, at worst, with a partial
last frame (a *torn tail*). Neither is accepted silently: the tail is reported in a log line
(positions and sizes only, no record content), cut back to the last complete frame, and the
segment is sealed with a seal frame that says it was recovered and how many bytes were dropped.
A torn frame can only belong to a batch whose fsync had not returned, so no acknowledged record
is ever lost; records are never duplicated or reordered because writing resumes in a new segment
chained from the last complete record.

Anything other than a torn tail (a frame that fails authentication, a broken link) is refused
with :class:`IntegrityError`: sealing over it would launder tampering.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from phiserve.audit import fsio
from phiserve.audit.chain import ChainState, build_seal, genesis_mac
from phiserve.audit.keys import AuditKeys
from phiserve.audit.record import canonical, utc_iso
from phiserve.audit.segments import SegmentFile, list_segments
from phiserve.audit.verify import check_segment
from phiserve.crypto.base import KeyProvider
from phiserve.errors import IntegrityError

log = logging.getLogger("phiserve.audit")


@dataclass(frozen=True, slots=True)
class StreamTail:
    """Where a stream's chain ends: the next record follows ``state`` in segment ``index + 1``."""

    state: ChainState
    index: int
    recovered: bool = False
    discarded_bytes: int = 0


def recover_stream(
    stream_dir: Path, stream: str, keys: AuditKeys, provider: KeyProvider
) -> StreamTail:
    """Find the end of the stream's chain, sealing its final segment if a crash left it open."""
    for stray in stream_dir.glob("seg-*.pal.tmp"):
        # A segment whose creation never completed holds a header only, never a record.
        log.warning(
            "audit: stream %s: removing %s, left by a crash while a segment was being created",
            stream, stray.name,
        )  # fmt: skip
        stray.unlink(missing_ok=True)
    segments = list_segments(stream_dir)
    if not segments:
        return StreamTail(ChainState(0, genesis_mac(keys.chain_key, keys.trail_id, stream)), 0)
    index, path = segments[-1]
    res = check_segment(path, stream=stream, index=index, keys=keys, provider=provider, expect=None)
    if res.problem is not None and res.problem.kind != "torn":
        raise IntegrityError(f"audit stream {stream!r} cannot be resumed: {res.problem}")
    assert res.state is not None
    assert res.scan is not None
    assert res.header is not None
    assert res.data_key is not None
    if res.sealed:
        return StreamTail(res.state, index)
    scan = res.scan
    discarded = scan.size - res.good_end
    if discarded:
        log.warning(
            "audit: stream %s segment %d has a torn tail: %d bytes after frame %d do not form a "
            "complete frame; cutting them off and sealing the segment at record seq %d",
            stream, index, discarded, res.frames - 1, res.state.seq,
        )  # fmt: skip
    else:
        log.warning(
            "audit: stream %s segment %d was left open (unclean shutdown); sealing it at "
            "record seq %d",
            stream, index, res.state.seq,
        )  # fmt: skip
    segment = SegmentFile.reopen(path, res.header, res.data_key, res.good_end, res.frames,
                                 res.records)  # fmt: skip
    try:
        os.ftruncate(segment.fd, res.good_end)
        fsio.sync(segment.fd)
        seal = build_seal(keys.chain_key, segment=index, count=res.records, state=res.state,
                          time=utc_iso(time.time()), recovered=True,
                          discarded_bytes=discarded)  # fmt: skip
        segment.write_durably(segment.encrypt(segment.frames, canonical(seal)), 1, 0)
    finally:
        segment.close()
    return StreamTail(res.state, index, recovered=True, discarded_bytes=discarded)
