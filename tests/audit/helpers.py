"""Helpers shared by the audit tests: reading a trail back, and editing segment files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from phiserve.audit import verify
from phiserve.audit.segments import DATA_START, list_segments, scan_frames
from phiserve.audit.verify import TrailReport
from phiserve.crypto.base import KeyProvider


def read_trail(
    audit_dir: Path, provider: KeyProvider, **kwargs: Any
) -> tuple[TrailReport, list[dict[str, Any]]]:
    """Verify the trail and return every record that verified, in order."""
    return verify.read_trail(audit_dir, provider, **kwargs)


def segment_paths(audit_dir: Path, stream: str = "server") -> list[Path]:
    """The stream's segment files in order."""
    return [path for _, path in list_segments(audit_dir / stream)]


def frames_of(path: Path) -> tuple[bytes, list[bytes]]:
    """A segment file split into its header region and its raw frames (length prefix included)."""
    data = path.read_bytes()
    scan = scan_frames(data)
    return data[:DATA_START], [data[f.offset : f.end] for f in scan.frames]


def write_frames(path: Path, head: bytes, frames: list[bytes]) -> None:
    """Write a segment file back from its parts."""
    path.write_bytes(head + b"".join(frames))
