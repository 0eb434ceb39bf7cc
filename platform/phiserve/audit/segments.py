"""The encrypted segment file: header slots, sealed frames, scanning and in-place re-wrapping.

Layout of ``<stream>/seg-NNNNNNNN.pal``::

    [slot 0: 4096 bytes][slot 1: 4096 bytes][frame][frame]...
    slot  = "PHIAUDH1" | u32 generation | u32 length | sha256(generation, length, json) | json | 0s
    frame = u32 length | 12-byte nonce | AES-256-GCM ciphertext+tag

The header JSON names the trail, stream, segment index, first sequence number, the previous
segment and its last MAC, the chain-key fingerprint, and the segment's data key wrapped by the
KEK. Two header slots let :func:`rewrap_segment` replace the wrapped key crash-safely in place
(write the older slot, sync; a reader takes the valid slot with the higher generation), so KEK
rotation never rewrites frames and never races a writer appending at the end of the file.

Every frame is sealed under the segment's data key with associated data binding it to the
segment's immutable header fields and its frame index: editing, reordering, deleting or moving a
frame (or a whole file) fails authentication. A segment ends with a *seal* frame (record count
and last MAC), so a truncated segment is told apart from one still being written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phiserve.audit import fsio
from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.crypto.envelope import ALGORITHM
from phiserve.errors import IntegrityError

FORMAT: Final = "phiserve-audit-segment/1"
SLOT_MAGIC: Final = b"PHIAUDH1"
SLOT_SIZE: Final = 4096
DATA_START: Final = 2 * SLOT_SIZE
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
MAX_FRAME_BYTES: Final = 1 << 20
_SLOT_PREFIX = struct.Struct(">II")
_FRAME_LEN = struct.Struct(">I")
_NAME = re.compile(r"^seg-(\d{8})\.pal$")


class SegmentFormatError(IntegrityError):
    """A segment file whose structure or header is not what this module writes."""


def segment_name(index: int) -> str:
    """File name of segment ``index``."""
    return f"seg-{index:08d}.pal"


def segment_index(name: str) -> int | None:
    """Index encoded in a segment file name, or ``None`` for other files."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def list_segments(stream_dir: Path) -> list[tuple[int, Path]]:
    """The stream's segment files as ``(index from name, path)``, in index order."""
    found = []
    for path in stream_dir.iterdir():
        index = segment_index(path.name)
        if index is not None and path.is_file():
            found.append((index, path))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """A segment's header: immutable identity and chain links, plus its wrapped data key."""

    trail: str
    stream: str
    index: int
    first_seq: int
    prev_index: int | None
    prev_mac: str
    created: str
    key_fp: str
    wrapped: WrappedKey
    generation: int = 1
    _aad_base: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(_canonical(self.immutable())).digest()
        object.__setattr__(self, "_aad_base", b"phiserve-audit-frame\0" + digest)

    def immutable(self) -> dict[str, Any]:
        """Fields that never change after creation; frames are bound to them."""
        return {
            "format": FORMAT,
            "algorithm": ALGORITHM,
            "trail": self.trail,
            "stream": self.stream,
            "index": self.index,
            "first_seq": self.first_seq,
            "prev_index": self.prev_index,
            "prev_mac": self.prev_mac,
            "created": self.created,
            "key_fp": self.key_fp,
        }

    def key_context(self) -> dict[str, str]:
        """Encryption context of the data key: a wrapped key moved to another segment fails."""
        return key_context(self.trail, self.stream, self.index)

    def frame_aad(self, frame_index: int) -> bytes:
        """Associated data of frame ``frame_index``: segment identity plus position."""
        return self._aad_base + frame_index.to_bytes(8, "big")

    def to_slot(self) -> bytes:
        """The header as one fixed-size slot."""
        body = _canonical({**self.immutable(), **self.wrapped.to_json()})
        prefix = _SLOT_PREFIX.pack(self.generation, len(body))
        slot = SLOT_MAGIC + prefix + hashlib.sha256(prefix + body).digest() + body
        if len(slot) > SLOT_SIZE:
            raise ValueError("segment header does not fit its slot")
        return slot.ljust(SLOT_SIZE, b"\0")

    @classmethod
    def from_json(cls, data: dict[str, Any], generation: int) -> SegmentHeader:
        """Build from a slot's JSON; raises :class:`SegmentFormatError` if malformed."""
        try:
            if data["format"] != FORMAT or data["algorithm"] != ALGORITHM:
                raise SegmentFormatError(f"unsupported segment format {data.get('format')!r}")
            prev_index = data["prev_index"]
            return cls(
                trail=str(data["trail"]),
                stream=str(data["stream"]),
                index=int(data["index"]),
                first_seq=int(data["first_seq"]),
                prev_index=None if prev_index is None else int(prev_index),
                prev_mac=str(data["prev_mac"]),
                created=str(data["created"]),
                key_fp=str(data["key_fp"]),
                wrapped=WrappedKey.from_json(data),
                generation=generation,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SegmentFormatError(f"malformed segment header ({type(exc).__name__})") from None


def key_context(trail: str, stream: str, index: int) -> dict[str, str]:
    """Encryption context under which segment ``index``'s data key is wrapped."""
    return {"purpose": "phiserve-audit-segment", "trail": trail, "stream": stream,
            "segment": str(index)}  # fmt: skip


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _parse_slot(raw: bytes) -> tuple[int, dict[str, Any]] | None:
    # A slot that is empty, torn or corrupt is ``None``; the other slot may still be good.
    if len(raw) < SLOT_SIZE or raw[:8] != SLOT_MAGIC:
        return None
    prefix = raw[8:16]
    generation, length = _SLOT_PREFIX.unpack(prefix)
    body = raw[48 : 48 + length]
    if 48 + length > SLOT_SIZE or hashlib.sha256(prefix + body).digest() != raw[16:48]:
        return None
    try:
        return generation, json.loads(body)
    except ValueError:
        return None


def parse_header(data: bytes) -> SegmentHeader:
    """The current header of a segment file's bytes (the valid slot of highest generation)."""
    slots = [_parse_slot(data[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in (0, 1)]
    valid = [s for s in slots if s is not None]
    if not valid:
        raise SegmentFormatError("segment header unreadable (both header slots invalid)")
    generation, body = max(valid, key=lambda s: s[0])
    return SegmentHeader.from_json(body, generation)


def read_header(path: Path) -> SegmentHeader:
    """The current header of the segment file at ``path``."""
    with path.open("rb") as fh:
        return parse_header(fh.read(DATA_START))


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One complete frame as found in a file: its position and its nonce+ciphertext."""

    index: int
    offset: int
    end: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Scan:
    """The frames of a segment file and how its tail ends."""

    frames: list[RawFrame]
    good_end: int  # offset just past the last complete frame
    size: int
    # Bytes past ``good_end`` that do not form a complete frame: an EOF inside a frame, or a
    # zero-filled tail (a crash can leave a file extended but not yet written).
    torn_bytes: int
    # A frame length that is impossible and not followed by zeros only: corruption, not a tear.
    corrupt_at: int | None


def scan_frames(data: bytes) -> Scan:
    """Split a segment file's bytes into complete frames without decrypting them."""
    frames: list[RawFrame] = []
    pos, size = DATA_START, len(data)
    while pos < size:
        if size - pos < _FRAME_LEN.size:
            break
        (length,) = _FRAME_LEN.unpack_from(data, pos)
        if length < NONCE_BYTES + TAG_BYTES or length > MAX_FRAME_BYTES:
            if data[pos:].count(0) == size - pos:
                break  # zero-filled tail
            return Scan(frames, pos, size, 0, corrupt_at=pos)
        end = pos + _FRAME_LEN.size + length
        if end > size:
            break
        frames.append(RawFrame(len(frames), pos, end, data[pos + _FRAME_LEN.size : end]))
        pos = end
    return Scan(frames, pos, size, size - pos, corrupt_at=None)


class NoncePool:
    """Random 96-bit GCM nonces, drawn from the OS in blocks of ``count``.

    Why: ``os.urandom`` releases the GIL, so a call per frame made the writer thread hand the
    GIL to the event loop and wait to get it back once per record. The nonces are as random
    as before, each used once; only the system call is shared. Not thread-safe: one per
    segment file, used by its stream's single writer.
    """

    __slots__ = ("_block", "_count", "_pos")

    def __init__(self, count: int = 256) -> None:
        self._count = count
        self._block = b""
        self._pos = 0

    def take(self) -> bytes:
        """The next unused nonce."""
        if self._pos >= len(self._block):
            self._block, self._pos = os.urandom(NONCE_BYTES * self._count), 0
        start = self._pos
        self._pos = start + NONCE_BYTES
        return self._block[start : self._pos]


def seal_frame(
    aead: AESGCM, header: SegmentHeader, frame_index: int, plaintext: bytes, nonce: bytes
) -> bytes:
    """Encrypt one frame's plaintext as frame ``frame_index`` of the segment under ``nonce``."""
    ct = aead.encrypt(nonce, plaintext, header.frame_aad(frame_index))
    return _FRAME_LEN.pack(NONCE_BYTES + len(ct)) + nonce + ct


def open_frame(aead: AESGCM, header: SegmentHeader, frame_index: int, payload: bytes) -> bytes:
    """Decrypt a frame found at ``frame_index``; raises :class:`IntegrityError` if it fails."""
    try:
        return aead.decrypt(
            payload[:NONCE_BYTES], payload[NONCE_BYTES:], header.frame_aad(frame_index)
        )
    except InvalidTag:
        raise IntegrityError("frame failed authentication") from None


def locate_frame(aead: AESGCM, header: SegmentHeader, found_at: int, payload: bytes) -> int | None:
    """For diagnostics: the index a misplaced frame was written at, if near ``found_at``."""
    for delta in (*range(1, 9), *range(-1, -9, -1)):
        index = found_at + delta
        if index < 0:
            continue
        try:
            aead.decrypt(payload[:NONCE_BYTES], payload[NONCE_BYTES:], header.frame_aad(index))
        except InvalidTag:
            continue
        return index
    return None


def frame_overhead() -> int:
    """Bytes a frame adds to its plaintext."""
    return _FRAME_LEN.size + NONCE_BYTES + TAG_BYTES


class SegmentFile:
    """An open segment being appended to by the (single) writer of its stream."""

    def __init__(self, path: Path, fd: int, header: SegmentHeader, data_key: bytes,
                 offset: int, frames: int, records: int) -> None:  # fmt: skip
        self.path = path
        self.fd = fd
        self.header = header
        self.aead = AESGCM(data_key)
        self.nonces = NoncePool()
        self.offset = offset
        self.frames = frames
        self.records = records
        self.opened = time.monotonic()
        # True after a failed write whose cut-back also failed: bytes past ``offset`` may exist.
        self.dirty = False

    @classmethod
    def create(cls, stream_dir: Path, header: SegmentHeader, data_key: bytes) -> SegmentFile:
        """Create the file durably (temporary name, sync, rename, sync folder) and open it."""
        path = stream_dir / segment_name(header.index)
        tmp = path.with_name(path.name + ".tmp")
        # O_DSYNC: appends are durable when write returns (see write_durably).
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DSYNC, 0o600)
        try:
            fsio.write_all(fd, header.to_slot() + b"\0" * SLOT_SIZE)
            fsio.sync(fd)
            if path.exists():  # never overwrite a segment: that would destroy records
                raise SegmentFormatError(f"segment file {path.name} already exists")
            os.rename(tmp, path)
            fsio.sync_dir(stream_dir)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return cls(path, fd, header, data_key, DATA_START, 0, 0)

    @classmethod
    def reopen(cls, path: Path, header: SegmentHeader, data_key: bytes, end: int, frames: int,
               records: int) -> SegmentFile:  # fmt: skip
        """Open an existing segment to append after its last good frame (at offset ``end``)."""
        fd = os.open(path, os.O_RDWR | os.O_DSYNC)
        return cls(path, fd, header, data_key, end, frames, records)

    def encrypt(self, frame_index: int, plaintext: bytes) -> bytes:
        """Frame bytes of ``plaintext`` at ``frame_index`` of this segment."""
        return seal_frame(self.aead, self.header, frame_index, plaintext, self.nonces.take())

    def write_durably(self, data: bytes, frames: int, records: int) -> None:
        """Append ``data`` (whole frames), durably; on failure cut the file back and re-raise.

        The descriptor is ``O_DSYNC``, so the write is the sync. The in-memory position only
        advances once the data is durable, so a failed write never leaves half a batch behind
        as far as this writer is concerned.
        """
        try:
            fsio.write_all_at(self.fd, data, self.offset)
        except BaseException:
            self.rollback()
            raise
        self.offset += len(data)
        self.frames += frames
        self.records += records

    def rollback(self) -> bool:
        """Cut the file back to the last durable frame; ``False`` (and dirty) if that failed."""
        try:
            os.ftruncate(self.fd, self.offset)
            fsio.sync(self.fd)
        except OSError:
            self.dirty = True
            return False
        self.dirty = False
        return True

    def close(self) -> None:
        """Close the descriptor (the file stays as it is)."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def rewrap_segment(path: Path, provider: KeyProvider) -> SegmentHeader:
    """Re-wrap a segment's data key under the provider's current KEK, in place and crash-safely.

    The new header goes into the slot that is not current, with the next generation, and is
    synced; frames are untouched (their associated data excludes the wrapped key).
    """
    fd = os.open(path, os.O_RDWR)
    try:
        raw = os.pread(fd, DATA_START, 0)
        header = parse_header(raw)
        data_key = provider.unwrap(header.wrapped, header.key_context())
        new = replace(
            header,
            wrapped=provider.wrap(data_key, header.key_context()),
            generation=header.generation + 1,
        )
        slots = [_parse_slot(raw[i * SLOT_SIZE : (i + 1) * SLOT_SIZE]) for i in (0, 1)]
        current = 0 if slots[0] is not None and slots[0][0] == header.generation else 1
        target = 1 - current
        os.pwrite(fd, new.to_slot(), target * SLOT_SIZE)
        fsio.sync(fd)
    finally:
        os.close(fd)
    return new
