"""The audit trail's keys: one random root key, stored wrapped by the KEK, and what derives from it.

``<audit dir>/audit-key.json`` holds the trail id, the root key wrapped by the key provider (bound
to the trail id), the list of streams the trail has, and a MAC over those fields. From the root
key derive the *chain key* (record MACs), the *body key* (HMAC of request bodies) and a key-file
key (the file's own MAC, so a stream cannot be dropped from the list unnoticed).

Rotating the KEK only re-wraps: :func:`rewrap` re-wraps the root key and every segment's data key
under the provider's current KEK, leaving every MAC and frame as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from phiserve.audit import fsio
from phiserve.audit.chain import key_fingerprint
from phiserve.audit.record import canonical, utc_iso
from phiserve.audit.segments import list_segments, rewrap_segment
from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.crypto.envelope import derive_key, new_data_key
from phiserve.errors import ConfigurationError, IntegrityError

KEY_FILE: Final = "audit-key.json"
LOCK_FILE: Final = ".audit-key.lock"
FORMAT: Final = "phiserve-audit-keys/1"
_STREAM_OK = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class AuditKeys:
    """The unwrapped keys of one audit trail (held in memory only)."""

    trail_id: str
    chain_key: bytes = field(repr=False)
    body_key: bytes = field(repr=False)
    file_key: bytes = field(repr=False)
    streams: tuple[str, ...] = ()
    # Keys record pseudonyms of identifiers (patients, instances): stable for the trail's life,
    # so an investigator holding the trail key can find every record about one identifier.
    pseudonym_key: bytes = field(default=b"", repr=False)

    @property
    def fingerprint(self) -> str:
        """Public fingerprint of the chain key, written into segment headers."""
        return key_fingerprint(self.chain_key)

    @classmethod
    def from_root(cls, trail_id: str, root: bytes, streams: tuple[str, ...]) -> AuditKeys:
        """Derive the purpose keys from the root key."""
        return cls(
            trail_id=trail_id,
            chain_key=derive_key(root, "audit-chain"),
            body_key=derive_key(root, "audit-body"),
            file_key=derive_key(root, "audit-keyfile"),
            streams=streams,
            pseudonym_key=derive_key(root, "audit-pseudonym"),
        )


def check_stream_name(stream: str) -> str:
    """Validate a stream name (it becomes a folder name)."""
    if not _STREAM_OK.match(stream):
        raise ConfigurationError(f"invalid audit stream name {stream!r} (use [a-z0-9_.-])")
    return stream


def root_context(trail_id: str) -> dict[str, str]:
    """Encryption context of the wrapped root key."""
    return {"purpose": "phiserve-audit-root", "trail": trail_id}


def _file_mac(file_key: bytes, data: dict[str, Any]) -> str:
    body = {k: data[k] for k in ("format", "trail", "created", "streams")}
    return hmac.new(file_key, canonical(body), hashlib.sha256).hexdigest()


def _read(audit_dir: Path) -> dict[str, Any]:
    path = audit_dir / KEY_FILE
    try:
        data = json.loads(path.read_bytes())
        if data["format"] != FORMAT:
            raise IntegrityError(f"audit key file {path} has unsupported format")
        WrappedKey.from_json(data["wrapped"])
        if not isinstance(data["streams"], list):
            raise TypeError("streams")
        return data
    except FileNotFoundError:
        raise IntegrityError(f"audit key file {path} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"audit key file {path} is malformed ({type(exc).__name__})") from None


def _unlock(data: dict[str, Any], provider: KeyProvider) -> AuditKeys:
    trail = str(data["trail"])
    root = provider.unwrap(WrappedKey.from_json(data["wrapped"]), root_context(trail))
    keys = AuditKeys.from_root(trail, root, tuple(data["streams"]))
    if not hmac.compare_digest(_file_mac(keys.file_key, data), str(data.get("mac", ""))):
        raise IntegrityError("audit key file was modified (its MAC does not match)")
    return keys


def load_keys(audit_dir: Path, provider: KeyProvider) -> AuditKeys:
    """Unwrap an existing trail's keys; raises if the key file is missing, altered or foreign."""
    return _unlock(_read(audit_dir), provider)


def streams_on_disk(audit_dir: Path) -> list[str]:
    """Stream folders under ``audit_dir`` that hold at least one segment."""
    if not audit_dir.is_dir():
        return []
    return sorted(p.name for p in audit_dir.iterdir() if p.is_dir() and list_segments(p))


def load_or_create_keys(audit_dir: Path, provider: KeyProvider) -> AuditKeys:
    """Load the trail's keys, creating a new trail (and key file) if the folder has none.

    A folder that already holds segments but no key file is refused: minting a new key there
    would silently start a second, unrelated chain over a damaged trail.
    """
    fsio.ensure_dir(audit_dir)
    with fsio.locked(audit_dir / LOCK_FILE):
        if (audit_dir / KEY_FILE).exists():
            return load_keys(audit_dir, provider)
        if streams_on_disk(audit_dir):
            raise IntegrityError(
                f"audit folder {audit_dir} holds segments but its key file is missing"
            )
        trail = secrets.token_hex(8)
        root = new_data_key()
        wrapped = provider.wrap(root, root_context(trail))
        keys = AuditKeys.from_root(trail, root, ())
        data: dict[str, Any] = {"format": FORMAT, "trail": trail,
                                "created": utc_iso(time.time()), "streams": [],
                                "wrapped": wrapped.to_json()}  # fmt: skip
        data["mac"] = _file_mac(keys.file_key, data)
        fsio.atomic_write(audit_dir / KEY_FILE, json.dumps(data, indent=2).encode())
        return keys


def register_stream(audit_dir: Path, keys: AuditKeys, stream: str) -> AuditKeys:
    """Add ``stream`` to the key file's stream list (before its first segment is created)."""
    check_stream_name(stream)
    if stream in keys.streams:
        return keys
    with fsio.locked(audit_dir / LOCK_FILE):
        data = _read(audit_dir)  # re-read under the lock: another writer may have added one
        if data["trail"] != keys.trail_id or not hmac.compare_digest(
            _file_mac(keys.file_key, data), str(data.get("mac", ""))
        ):
            raise IntegrityError("audit key file changed under a running writer")
        data["streams"] = sorted({*data["streams"], stream})
        data["mac"] = _file_mac(keys.file_key, data)
        fsio.atomic_write(audit_dir / KEY_FILE, json.dumps(data, indent=2).encode())
        return dataclasses.replace(keys, streams=tuple(data["streams"]))


def rewrap(audit_dir: Path, provider: KeyProvider) -> int:
    """Re-wrap the audit root key and every segment's data key under the current KEK.

    Called by ``phiserve keys rotate`` after ``provider.rotate()`` and before
    ``provider.retire_others()``: payloads, frames and MACs are untouched. Each file is replaced
    crash-safely, so an interrupted run can simply be repeated (old KEKs still unwrap until
    retired). Returns the number of keys re-wrapped (0 when ``audit_dir`` holds no trail yet).
    A running writer keeps its open segment's key in memory and is unaffected, but it wraps the
    keys of *new* segments with its own provider object: that must see the new KEK too before
    old KEKs are retired (restart the server, or rotate before it starts).
    """
    if not (audit_dir / KEY_FILE).exists() and not streams_on_disk(audit_dir):
        return 0  # no trail yet: nothing is wrapped
    with fsio.locked(audit_dir / LOCK_FILE):
        data = _read(audit_dir)
        keys = _unlock(data, provider)  # also checks the key file's MAC
        root = provider.unwrap(WrappedKey.from_json(data["wrapped"]), root_context(keys.trail_id))
        data["wrapped"] = provider.wrap(root, root_context(keys.trail_id)).to_json()
        fsio.atomic_write(audit_dir / KEY_FILE, json.dumps(data, indent=2).encode())
        count = 1
        for stream in sorted({*keys.streams, *streams_on_disk(audit_dir)}):
            stream_dir = audit_dir / stream
            if not stream_dir.is_dir():
                continue
            for _, path in list_segments(stream_dir):
                rewrap_segment(path, provider)
                count += 1
    return count
