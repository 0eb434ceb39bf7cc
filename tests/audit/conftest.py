"""Fixtures for the audit tests: a local KEK, a key provider that can go down, writers, events."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from phiserve.audit.record import AuditEvent, utc_iso
from phiserve.audit.writer import AuditWriter
from phiserve.crypto.base import WrappedKey
from phiserve.crypto.local import LocalKeyProvider
from phiserve.errors import KeyProviderError


class FlakyProvider:
    """A real local key provider that can be switched off, like a KMS outage."""

    name = "flaky"

    def __init__(self, inner: LocalKeyProvider) -> None:
        self.inner = inner
        self.down = False
        self.wraps = 0

    def _check(self) -> None:
        if self.down:
            raise KeyProviderError("key provider unreachable (test outage)")

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        self._check()
        self.wraps += 1
        return self.inner.wrap(data_key, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self._check()
        return self.inner.unwrap(wrapped, context)

    def rotate(self) -> str:
        return self.inner.rotate()

    def retire_others(self) -> None:
        self.inner.retire_others()


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    """Path of the local KEK file (outside the audit folder, as in production)."""
    return tmp_path / "keys" / "kek.json"


@pytest.fixture
def provider(kek_file: Path) -> FlakyProvider:
    """A local key provider (created on first use) that tests can take down."""
    return FlakyProvider(LocalKeyProvider(kek_file, create=True))


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    """The audit folder (not created yet: the writer creates it)."""
    return tmp_path / "audit"


_counter = iter(range(1, 10**9))


def make_event(**overrides: Any) -> AuditEvent:
    """A plausible event with a unique request id."""
    fields: dict[str, Any] = {
        "time": utc_iso(time.time()),
        "request_id": f"req-{next(_counter)}",
        "trace_id": None,
        "subject": "clinician-7",
        "client": "10.0.0.7",
        "method": "POST",
        "route": "/v2/models/{model}/infer",
        "model": "breast-cancer",
        "version": 1,
        "outcome": "ok",
        "status": 200,
        "latency_ms": 1.5,
        "break_glass": False,
        "body_hmac": "ab" * 32,
    }
    fields.update(overrides)
    return AuditEvent(**fields)


@pytest.fixture
def writer_factory(
    audit_dir: Path, provider: FlakyProvider
) -> Iterator[Callable[..., AuditWriter]]:
    """Build started writers on ``audit_dir``; every one is closed at teardown."""
    made: list[AuditWriter] = []

    def build(directory: Path | None = None, *, start: bool = True, **kwargs: Any) -> AuditWriter:
        kwargs.setdefault("retry_interval_s", 0.0)
        writer = AuditWriter(directory or audit_dir, kwargs.pop("provider", provider), **kwargs)
        made.append(writer)
        if start:
            writer.start()
        return writer

    yield build
    for writer in made:
        writer.close()


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a real tmpfs of a given size (root only); the test is skipped where it cannot be."""
    mounts: list[Path] = []

    def mount(size_kib: int) -> Path:
        point = tmp_path / f"tmpfs{len(mounts)}"
        point.mkdir()
        if not _mount("-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(point)):
            pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[Callable[[Path, bool], Path]]:
    """Bind-mount a folder elsewhere, read-only or not; remount with ``remount(point, ro)``."""
    mounts: list[Path] = []

    def bind(source: Path, read_only: bool) -> Path:
        point = tmp_path / f"bind{len(mounts)}"
        point.mkdir()
        if not _mount("--bind", str(source), str(point)):
            pytest.skip("cannot bind-mount here (needs root and CAP_SYS_ADMIN)")
        mounts.append(point)
        if read_only:
            remount(point, True)
        return point

    yield bind
    for point in reversed(mounts):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remount(point: Path, read_only: bool) -> None:
    """Flip a bind mount between read-only and read-write."""
    flag = "ro" if read_only else "rw"
    assert _mount("-o", f"remount,{flag},bind", str(point)), f"remount {flag} failed"
