"""The audit writer: one background thread, group commit, fail closed, recover when the sink does.

``await writer.append(event)`` returns only once the record is on disk (written and synced).
All pending records are taken by a single writer thread as one batch: one chain extension and
one synchronous-data (``O_DSYNC``) write for the whole batch (group commit), so under
concurrency the cost of a sync is shared by every request waiting on it and throughput holds.

Failing closed: when the sink cannot make a record durable (``ENOSPC``, ``EACCES``, ``EROFS``,
``EIO``, a key provider that is down), every waiting ``append`` raises
:class:`~phiserve.errors.AuditUnavailable`, the partial write is cut back so the chain stays
exact, and the writer stays in a *failed* state. It never stops the process: the next batch
(after ``retry_interval_s``) retries from wherever it stopped (load keys, recover, open a
segment, cut back the tail) and the writer recovers by itself when the sink works again.

One stream has one writer (an ``flock`` on ``<stream>/.writer.lock``): give each process its own
stream name. Create and :meth:`~AuditWriter.start` the writer in the process that serves (after
any fork), and :meth:`~AuditWriter.close` it after in-flight requests have drained: close writes
what is pending and seals the open segment.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from phiserve.audit import fsio
from phiserve.audit.chain import ChainState, build_seal
from phiserve.audit.keys import (
    AuditKeys,
    check_stream_name,
    load_or_create_keys,
    register_stream,
)
from phiserve.audit.pseudonym import pseudonym
from phiserve.audit.record import AuditEvent, AuditRecord, canonical, utc_iso
from phiserve.audit.recovery import recover_stream
from phiserve.audit.segments import SegmentFile, SegmentHeader, frame_overhead, key_context
from phiserve.crypto.base import KeyProvider
from phiserve.crypto.envelope import new_data_key
from phiserve.errors import AuditUnavailable, ConfigurationError, IntegrityError

if TYPE_CHECKING:
    from phiserve.config import Settings

log = logging.getLogger("phiserve.audit")

WRITER_LOCK = ".writer.lock"
# Room kept in a segment for its seal frame, so a full segment can always be sealed.
_SEAL_RESERVE = 512

_Future = asyncio.Future[AuditRecord] | concurrent.futures.Future[AuditRecord]


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    future: _Future
    loop: asyncio.AbstractEventLoop | None = None


@dataclass(slots=True)
class WriterStats:
    """Counters for metrics and benchmarks (written by the writer thread only)."""

    records: int = 0
    commits: int = 0  # durable writes (group commits)
    largest_batch: int = 0
    failures: int = 0
    segments_opened: int = 0


@dataclass(slots=True)
class _Sink:
    """Writer-thread state of the stream on disk."""

    keys: AuditKeys | None = None
    lock_fd: int | None = None
    state: ChainState | None = None
    last_index: int = 0
    segment: SegmentFile | None = None
    failure: str | None = None
    failed_at: float = field(default=0.0)


class AuditWriter:
    """Appends audit records to one stream of an audit folder, durably and in order."""

    def __init__(
        self,
        directory: Path,
        provider: KeyProvider,
        *,
        stream: str = "server",
        segment_max_bytes: int = 64 * 1024 * 1024,
        segment_max_age_s: float = 3600.0,
        mirror: TextIO | None = None,
        max_batch: int | None = None,
        retry_interval_s: float = 1.0,
    ) -> None:
        """Configure a writer; nothing touches the disk until :meth:`start`.

        ``mirror`` receives each durable record as a JSON line (``audit_stdout``).
        ``max_batch`` caps a group commit (``1`` means one fsync per record, for comparison).
        ``retry_interval_s`` is how long a failed sink answers at once before trying again.
        """
        self.directory = Path(directory)
        self.provider = provider
        self.stream = check_stream_name(stream)
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self.mirror = mirror
        self.max_batch = max_batch
        self.retry_interval_s = retry_interval_s
        self.stats = WriterStats()
        self._stream_dir = self.directory / self.stream
        self._sink = _Sink()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._thread: threading.Thread | None = None
        self._closing = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        provider: KeyProvider,
        *,
        stream: str = "server",
        mirror: TextIO | None = None,
    ) -> AuditWriter:
        """A writer configured from ``PHISERVE_AUDIT_*`` settings (stdout mirror included)."""
        if mirror is None and settings.audit_stdout:
            mirror = sys.stdout
        return cls(
            settings.audit_path,
            provider,
            stream=stream,
            segment_max_bytes=settings.audit_segment_max_bytes,
            segment_max_age_s=settings.audit_segment_max_age_s,
            mirror=mirror,
        )

    # --- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        """Open the stream (recovering a crashed tail) and start the writer thread.

        Raises :class:`IntegrityError` when the trail is damaged or the key does not fit, and
        :class:`ConfigurationError` when another process writes this stream: retrying cannot
        fix either. An unavailable sink (disk, permissions, key provider) does not raise: the
        writer starts failed, requests fail closed, and it recovers when the sink does.
        """
        if self._thread is not None:
            return
        try:
            self._prepare()
        except (IntegrityError, ConfigurationError):
            self._release()
            raise
        except Exception as exc:
            self._mark_failed(exc)
        self._thread = threading.Thread(
            target=self._run, name=f"audit-writer-{self.stream}", daemon=True
        )
        self._thread.start()

    def append(self, event: AuditEvent) -> asyncio.Future[AuditRecord]:
        """Queue one record; the future resolves once it is durable, or raises
        :class:`AuditUnavailable`. A plain future, not a coroutine: the writer commits the record
        even if the waiter is cancelled, so no task (or shield) is needed per request."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditRecord] = loop.create_future()
        self._submit(_Pending(event, future, loop))
        return future

    def append_sync(self, event: AuditEvent, timeout: float | None = 30.0) -> AuditRecord:
        """Blocking :meth:`append` for threads and command-line tools."""
        future: concurrent.futures.Future[AuditRecord] = concurrent.futures.Future()
        self._submit(_Pending(event, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AuditUnavailable() from None

    def close(self, timeout: float | None = 30.0) -> None:
        """Write what is pending, seal the open segment and stop; later appends fail closed."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "audit: writer of stream %s did not stop within %ss", self.stream, timeout
                )
                return
        else:
            self._release()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    @property
    def healthy(self) -> bool:
        """Whether the sink works (for readiness): started, not closed, not failed."""
        alive = self._thread is not None and self._thread.is_alive() and not self._closing
        return alive and self._sink.failure is None

    @property
    def body_key(self) -> bytes | None:
        """Key of the request-body HMAC, once the trail's keys are loaded."""
        keys = self._sink.keys
        return keys.body_key if keys else None

    def pseudonym(self, kind: str, value: str) -> str:
        """The trail's pseudonym of an identifier (see :mod:`phiserve.audit.pseudonym`).

        Fails closed (:class:`AuditUnavailable`) until the trail's keys are loaded.
        """
        keys = self._sink.keys
        if keys is None:
            raise AuditUnavailable()
        return pseudonym(keys.pseudonym_key, kind, value)

    # --- submission and settlement ------------------------------------------------------------
    def _submit(self, item: _Pending) -> None:
        with self._cond:
            if self._thread is None or self._closing:
                raise AuditUnavailable()
            self._pending.append(item)
            self._cond.notify()

    @staticmethod
    def _resolve(items: Sequence[tuple[_Pending, AuditRecord | None]]) -> None:
        for item, record in items:
            if item.future.done():  # the waiting task was cancelled, or already answered
                continue
            if record is None:
                item.future.set_exception(AuditUnavailable())  # one instance per waiter
            else:
                item.future.set_result(record)

    def _settle(self, items: Sequence[tuple[_Pending, AuditRecord | None]]) -> None:
        # Futures of an event loop are resolved on that loop: one wake-up per loop per batch.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, AuditRecord | None]]]
        by_loop = defaultdict(list)
        direct = []
        for item, record in items:
            if item.loop is None:
                direct.append((item, record))
            else:
                by_loop[item.loop].append((item, record))
        self._resolve(direct)
        for loop, batch in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._resolve, batch)

    # --- the writer thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    # A failed sink is retried while idle too, so readiness (which keeps traffic
                    # away) can recover without a request to trigger the retry.
                    interval = max(self.retry_interval_s, 0.2) if self._sink.failure else None
                    if not self._cond.wait(interval):
                        self._probe()
                if not self._pending:
                    break
                if self.max_batch:
                    batch = self._pending[: self.max_batch]
                    del self._pending[: self.max_batch]
                else:
                    batch, self._pending = self._pending, []
            try:
                self._commit(batch)
            except BaseException as exc:  # never let the thread die with requests waiting
                log.exception("audit: unexpected writer error (%s)", type(exc).__name__)
                self._mark_failed(exc)
                self._settle([(item, None) for item in batch])
        self._shutdown()

    def _commit(self, batch: list[_Pending]) -> None:
        sink = self._sink
        if sink.failure is not None and time.monotonic() - sink.failed_at < self.retry_interval_s:
            self._settle([(item, None) for item in batch])
            return
        done = 0
        try:
            self._prepare()
            while done < len(batch):
                segment = sink.segment
                assert segment is not None
                assert sink.state is not None
                assert sink.keys is not None
                aged = time.monotonic() - segment.opened >= self.segment_max_age_s
                if segment.records and aged:
                    self._rotate()
                    continue
                data, written, state, full = self._frames(segment, batch[done:])
                if written:
                    segment.write_durably(data, len(written), len(written))
                    sink.state = state
                    if sink.failure is not None:  # before settling: waiters see it healthy
                        log.warning("audit: stream %s recovered; records are durable again",
                                    self.stream)  # fmt: skip
                        sink.failure = None
                    self.stats.commits += 1
                    self.stats.records += len(written)
                    self.stats.largest_batch = max(self.stats.largest_batch, len(written))
                    self._mirror(written)
                    self._settle(written)
                    done += len(written)
                if full:
                    self._rotate()
        except Exception as exc:
            self._mark_failed(exc)
            self._settle([(item, None) for item in batch[done:]])

    def _frames(
        self, segment: SegmentFile, items: list[_Pending]
    ) -> tuple[bytes, list[tuple[_Pending, AuditRecord]], ChainState, bool]:
        """Chain and encrypt as many of ``items`` as fit in ``segment``."""
        keys, state = self._sink.keys, self._sink.state
        assert keys is not None
        assert state is not None
        out = bytearray()
        written: list[tuple[_Pending, AuditRecord]] = []
        frame, size, overhead = segment.frames, segment.offset, frame_overhead()
        limit = self.segment_max_bytes - _SEAL_RESERVE
        for item in items:
            record = state.link(keys.chain_key, item.event)
            plain = record.frame_plaintext()
            if (segment.records or written) and size + len(plain) + overhead > limit:
                return bytes(out), written, state, True
            out += segment.encrypt(frame, plain)
            frame += 1
            size += len(plain) + overhead
            state = state.after(record)
            written.append((item, record))
        return bytes(out), written, state, False

    def _prepare(self) -> None:
        """Bring the sink to "a segment is open and clean", resuming wherever it stopped."""
        sink = self._sink
        if sink.keys is None:
            sink.keys = load_or_create_keys(self.directory, self.provider)
        if sink.lock_fd is None:
            fsio.ensure_dir(self._stream_dir)
            try:
                sink.lock_fd = fsio.acquire_lock(self._stream_dir / WRITER_LOCK, blocking=False)
            except BlockingIOError:
                raise ConfigurationError(
                    f"audit stream {self.stream!r} in {self.directory} is held by another "
                    "writer; give each process its own stream"
                ) from None
        if self.stream not in sink.keys.streams:
            sink.keys = register_stream(self.directory, sink.keys, self.stream)
        if sink.state is None:
            tail = recover_stream(self._stream_dir, self.stream, sink.keys, self.provider)
            sink.state, sink.last_index = tail.state, tail.index
        if sink.segment is None:
            header, data_key = self._next_header(sink.last_index + 1)
            self._open(header, data_key)
        elif sink.segment.dirty and not sink.segment.rollback():
            raise OSError(errno.EIO, "cannot cut back the audit segment after a failed write")

    def _next_header(self, index: int) -> tuple[SegmentHeader, bytes]:
        """Header and data key of segment ``index``, which continues the chain where it stands.

        The key provider is called here, before anything is written: if it is down, the files
        on disk stay exactly as they are.
        """
        sink = self._sink
        assert sink.keys is not None
        assert sink.state is not None
        data_key = new_data_key()
        wrapped = self.provider.wrap(data_key, key_context(sink.keys.trail_id, self.stream, index))
        header = SegmentHeader(
            trail=sink.keys.trail_id,
            stream=self.stream,
            index=index,
            first_seq=sink.state.seq + 1,
            prev_index=index - 1 if index > 1 else None,
            prev_mac=sink.state.mac,
            created=utc_iso(time.time()),
            key_fp=sink.keys.fingerprint,
            wrapped=wrapped,
        )
        return header, data_key

    def _open(self, header: SegmentHeader, data_key: bytes) -> None:
        self._sink.segment = SegmentFile.create(self._stream_dir, header, data_key)
        self._sink.last_index = header.index
        self.stats.segments_opened += 1

    def _seal(self, segment: SegmentFile) -> None:
        sink = self._sink
        assert sink.keys is not None
        assert sink.state is not None
        seal = build_seal(sink.keys.chain_key, segment=segment.header.index,
                          count=segment.records, state=sink.state,
                          time=utc_iso(time.time()))  # fmt: skip
        segment.write_durably(segment.encrypt(segment.frames, canonical(seal)), 1, 0)

    def _rotate(self) -> None:
        sink = self._sink
        segment = sink.segment
        assert segment is not None
        # Next header (and key-provider call) first: an outage leaves this segment open.
        header, data_key = self._next_header(segment.header.index + 1)
        self._seal(segment)
        segment.close()
        sink.segment = None
        self._open(header, data_key)

    def _probe(self) -> None:
        """Retry a failed sink with no records: set-up (keys, recovery, an open clean segment),
        then a real durable write beside the segments (space, permissions, mount)."""
        try:
            self._prepare()
            fsio.probe_write(self._stream_dir)
        except Exception as exc:  # still failing: stay failed, retry after the interval
            self._mark_failed(exc)
        else:
            log.warning("audit: stream %s recovered; records are durable again", self.stream)
            self._sink.failure = None

    def _mark_failed(self, exc: BaseException) -> None:
        sink = self._sink
        cause = fsio.describe(exc)
        if sink.failure != cause:
            log.error(
                "audit: stream %s cannot make records durable (%s); requests fail closed "
                "until it recovers",
                self.stream, cause,
            )  # fmt: skip
        sink.failure = cause
        sink.failed_at = time.monotonic()
        self.stats.failures += 1

    def _mirror(self, written: list[tuple[_Pending, AuditRecord]]) -> None:
        if self.mirror is None:
            return
        lines = []
        for _, record in written:
            data = record.to_dict()
            del data["kind"]
            lines.append(json.dumps({"log": "phiserve.audit", "stream": self.stream, **data}))
        try:
            self.mirror.write("\n".join(lines) + "\n")
            self.mirror.flush()
        except (OSError, ValueError) as exc:  # best effort: the record itself is durable
            log.warning("audit: stdout mirror failed (%s)", fsio.describe(exc))

    def _shutdown(self) -> None:
        sink = self._sink
        try:
            if sink.segment is not None:
                if sink.segment.dirty and not sink.segment.rollback():
                    raise OSError(errno.EIO, "cannot cut back the audit segment")
                self._seal(sink.segment)
                log.info("audit: stream %s sealed segment %d", self.stream,
                         sink.segment.header.index)  # fmt: skip
        except Exception as exc:
            log.error(
                "audit: could not seal stream %s on close (%s); it is sealed as recovered at "
                "the next start",
                self.stream, fsio.describe(exc),
            )  # fmt: skip
        finally:
            self._release()

    def _release(self) -> None:
        sink = self._sink
        if sink.segment is not None:
            sink.segment.close()
            sink.segment = None
        if sink.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(sink.lock_fd)
            sink.lock_fd = None
