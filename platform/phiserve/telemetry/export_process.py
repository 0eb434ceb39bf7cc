"""Span export in a child process: OTLP encoding and the collector client off the serving GIL.

The serving process only marshals each finished request's span records
(:data:`~phiserve.telemetry.tracing.SpanRecord` tuples, one C call per request) into a buffer,
and :class:`SpanPipe`'s thread writes the buffer into a pipe once a batch is full or the schedule
delay has passed (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_SCHEDULE_DELAY``; at most
``OTEL_BSP_MAX_QUEUE_SIZE`` spans wait, further ones are dropped and counted, as the SDK's batch
processor does). A child process (``python -m phiserve.telemetry.export_process PROTOCOL``)
encodes them with :mod:`._otlp` and sends them with the SDK's own OTLP exporter, configured by the
same ``OTEL_EXPORTER_OTLP_*`` environment (endpoint, headers, TLS, compression, timeout, retries).

Why: on a thread of the serving process, encoding a traced request's six spans and running the
OTLP client cost ~20 us of CPU that held the GIL. Measured on the 2-core benchmark machine
(32 users, auth and audit on, tracing at ratio 1.0 against 0.0, medians of 4-5 interleaved runs):
the SDK's batch processor with an exporter thread served 0.83-0.85x, this design 0.87-0.89x,
the same with a child that discards everything 0.99x. On those two shared cores the child's CPU
(~20 us a request) still counts about as much as the event loop's: encoding on the event loop
instead, or packing ids and times there to halve the child's work, measured the same as this
(each moved ~5-15 us between the two). With more cores than the load uses, the child's CPU is
free and only the event loop's counts, which is what this design minimises.

Pipe protocol, parent to child on stdin: frames of a 5-byte header (kind, payload length) and a
payload. ``SETUP`` (first): marshal of (encoded resource and scope, spans per request).
``EXPORT``: marshalled record lists, each prefixed by its 4-byte length. ``FLUSH``: an 8-byte
token the child writes back on stdout once every earlier frame has been sent. End of input: the
child sends what it has and exits.

Failures: the child logs failed exports itself (collector down, batch rejected) and carries on.
If the child dies, the batch being handed over is dropped with a warning and another child is
started (at most one start per :data:`RESTART_INTERVAL_S`). A slow collector fills the pipe and
blocks the pipe's thread, so the buffer fills and spans are dropped: requests never wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

from phiserve.telemetry._otlp import Unsupported, encode_records
from phiserve.telemetry.tracing import OTLP_PROTOCOLS, SpanRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

CHILD_MODULE: Final = "phiserve.telemetry.export_process"
RESTART_INTERVAL_S: Final = 5.0
PIPE_BYTES: Final = 1 << 20  # Linux's default limit for an unprivileged process
_HEADER: Final = struct.Struct("<BI")
_LENGTH: Final = struct.Struct("<I")
_TOKEN: Final = struct.Struct("<Q")
_SETUP: Final = 0
_EXPORT: Final = 1
_FLUSH: Final = 2


class SpanPipe:
    """Buffers span records and hands them, batch by batch, to the export child process."""

    def __init__(
        self,
        protocol: str,
        head: tuple[bytes, bytes],
        *,
        max_queue_size: int,
        max_export_batch_size: int,
        schedule_delay_s: float,
    ) -> None:
        """Start the child for ``protocol`` and the thread that feeds it.

        ``head`` is the encoded resource and scope (:func:`._otlp.scope_head`) of every record.
        """
        self.max_queue_size = max_queue_size
        self.max_export_batch_size = max_export_batch_size
        self.schedule_delay_s = schedule_delay_s
        self._child = _Child(protocol, marshal.dumps((head, max_export_batch_size)))
        self._lock = threading.Lock()  # guards the buffer
        self._ship_lock = threading.Lock()  # keeps frames in order between thread and flush
        self._chunks: list[bytes] = []
        self._pending = 0  # spans in the buffer
        self._dropped = 0
        self._wake = threading.Event()
        self._closed = False
        self._thread = self._start_thread()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (pipe := ref()) and pipe._after_fork())

    @property
    def child_pid(self) -> int | None:
        """The export child's process id (``None`` while none runs)."""
        return self._child.pid

    def submit(self, records: Sequence[SpanRecord]) -> None:
        """Queue finished spans (called on the event loop: one marshal call, no I/O)."""
        data = marshal.dumps(records)
        count = len(records)
        with self._lock:
            if self._pending + count > self.max_queue_size:
                self._dropped += count
                return
            self._chunks.append(_LENGTH.pack(len(data)) + data)
            self._pending += count
            if self._pending >= self.max_export_batch_size and not self._wake.is_set():
                self._wake.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Send everything queued and wait until the child has exported it (``False``: timeout)."""
        deadline = time.monotonic() + timeout_millis / 1000
        return self._ship(deadline) and self._child.flush(deadline)

    def shutdown(self, timeout_millis: int = 30000) -> None:
        """Send what is queued, let the child finish and exit; kill it after the timeout."""
        deadline = time.monotonic() + timeout_millis / 1000
        self._closed = True
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():  # else it is stuck handing a batch to a stuck child
            self._ship(deadline)
        self._child.close(deadline)

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.schedule_delay_s)
            self._wake.clear()
            self._ship()

    def _ship(self, deadline: float | None = None) -> bool:
        """Hand the buffer to the child; ``False`` if that could not finish by ``deadline``.

        Without a deadline (the pipe's own thread) it waits as long as the child does.
        """
        if not self._ship_lock.acquire(timeout=_timeout(deadline)):
            return False
        try:
            with self._lock:
                chunks, self._chunks = self._chunks, []
                spans, self._pending = self._pending, 0
                dropped, self._dropped = self._dropped, 0
            if dropped:
                log.warning(
                    "%d spans dropped: the export queue (OTEL_BSP_MAX_QUEUE_SIZE=%d) was full",
                    dropped,
                    self.max_queue_size,
                )
            if not chunks:
                return True
            return self._child.send(_EXPORT, b"".join(chunks), spans, deadline) is not None
        finally:
            self._ship_lock.release()

    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="phiserve-span-pipe", daemon=True)
        thread.start()
        return thread

    def _after_fork(self) -> None:
        """In a forked copy: fresh locks, buffer, child and thread (the parent keeps its own)."""
        self._lock, self._ship_lock = threading.Lock(), threading.Lock()
        self._chunks, self._pending, self._dropped = [], 0, 0
        self._wake = threading.Event()
        self._child.forget()
        if not self._closed:
            self._thread = self._start_thread()


class _Child:
    """The export child process: start, restart, write frames, wait for flush tokens."""

    def __init__(self, protocol: str, setup: bytes) -> None:
        if protocol not in OTLP_PROTOCOLS:
            raise ValueError(f"OTLP protocol {protocol!r}: use one of {list(OTLP_PROTOCOLS)}")
        self._protocol = protocol
        self._setup = setup
        self._lock = threading.Lock()  # one writer of the pipe at a time
        self._flush_lock = threading.Lock()  # one reader of the tokens at a time
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_start = float("-inf")
        self._token = 0
        self._closed = False
        with self._lock:
            self._live()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def send(
        self, kind: int, payload: bytes, spans: int, deadline: float | None = None
    ) -> subprocess.Popen[bytes] | None:
        """Write one frame; the child it went to, or ``None`` if it was dropped.

        With a ``deadline``, gives up (dropping the frame) when the child has not taken it by
        then; a child that stopped reading mid-frame is stopped, since its input is now broken.
        """
        if not self._lock.acquire(timeout=_timeout(deadline)):
            if spans:
                log.warning("span exporter process is not reading: %d spans dropped", spans)
            return None
        try:
            proc = self._live()
            if proc is None or proc.stdin is None:
                if spans:
                    log.warning("no span exporter process: %d spans dropped", spans)
                return None
            try:
                written = _write_all(
                    proc.stdin.fileno(), _HEADER.pack(kind, len(payload)) + payload, deadline
                )
            except OSError:
                log.warning(
                    "span exporter process stopped reading (exit code %s): %d spans dropped",
                    proc.poll(),
                    spans,
                )
                self._discard(proc)
                return None
            if not written:
                log.warning("span exporter process is not reading: %d spans dropped", spans)
                self._discard(proc)
                return None
            return proc
        finally:
            self._lock.release()

    def flush(self, deadline: float) -> bool:
        """Wait until the child has sent every frame written so far; ``False`` on timeout."""
        if not self._flush_lock.acquire(timeout=_timeout(deadline)):
            return False
        try:
            self._token += 1
            proc = self.send(_FLUSH, _TOKEN.pack(self._token), 0, deadline)
            if proc is None or proc.stdout is None:
                return False
            return self._await_token(proc.stdout.fileno(), self._token, deadline)
        finally:
            self._flush_lock.release()

    @staticmethod
    def _await_token(fd: int, token: int, deadline: float) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return False
            echoed = os.read(fd, _TOKEN.size)  # tokens are written whole (< PIPE_BUF)
            if len(echoed) < _TOKEN.size:
                return False  # the child died
            if _TOKEN.unpack(echoed)[0] >= token:  # tokens of timed-out flushes come first
                return True

    def close(self, deadline: float) -> None:
        """Close the child's input; wait for it to finish until ``deadline``, then kill it."""
        self._closed = True
        if not self._lock.acquire(timeout=_timeout(deadline)):
            # A write is stuck: the child stopped reading. Killing it fails that write, and the
            # writer reaps it.
            proc = self._proc
            if proc is not None:
                log.warning("span exporter process is not reading; stopping it")
                proc.kill()
            return
        try:
            proc, self._proc = self._proc, None
        finally:
            self._lock.release()
        if proc is None:
            return
        _close(proc.stdin)
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("span exporter process did not finish in time; stopping it")
            proc.kill()
            proc.wait()
        _close(proc.stdout)

    def forget(self) -> None:
        """After a fork: drop our copy of the parent's child without touching it."""
        self._lock, self._flush_lock = threading.Lock(), threading.Lock()
        proc, self._proc, self._last_start = self._proc, None, float("-inf")
        if proc is not None:
            _close(proc.stdin)
            _close(proc.stdout)

    def _live(self) -> subprocess.Popen[bytes] | None:
        """The running child, starting one if there is none and a start is due (lock held)."""
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            log.warning("span exporter process exited with code %s", proc.returncode)
            self._discard(proc)
            proc = None
        if proc is not None or self._closed:
            return proc
        if time.monotonic() - self._last_start < RESTART_INTERVAL_S:
            return None  # a child that dies at once (bad settings) is not restarted in a loop
        self._last_start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, self._protocol],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("span exporter process could not start: %s", type(exc).__name__)
            return None
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)  # writes wait in select, where a deadline can end them
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            # A whole batch (~0.5 MB at 4096 spans) fits: one hand-over, not eight.
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            _write_all(fd, _HEADER.pack(_SETUP, len(self._setup)) + self._setup, None)
        except OSError:
            self._discard(proc)
            return None
        self._proc = proc
        return proc

    def _discard(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a dead or broken child and reap it (lock held)."""
        if self._proc is proc:
            self._proc = None
        _close(proc.stdin)
        _close(proc.stdout)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _write_all(fd: int, data: bytes, deadline: float | None) -> bool:
    """Write ``data`` to the non-blocking ``fd``; ``False`` if ``deadline`` passed first."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([], [fd], [], timeout)[1]:
                return False
    return True


def _timeout(deadline: float | None) -> float:
    """A lock's ``acquire`` timeout for ``deadline`` (-1: wait as long as it takes)."""
    return -1 if deadline is None else max(0.0, deadline - time.monotonic())


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # a broken pipe has nothing left to flush
            stream.close()


# --- the child --------------------------------------------------------------------------------
class _Sender(Protocol):
    def send(self, data: bytes, spans: int) -> None: ...

    def shutdown(self) -> None: ...


def sdk_exporter_class(protocol: str) -> type[SpanExporter]:
    """The SDK's OTLP span exporter for ``protocol``; it reads ``OTEL_EXPORTER_OTLP_*`` itself."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter


def _http_sender() -> _Sender:
    class HttpSender(sdk_exporter_class("http/protobuf")):  # type: ignore[misc]
        """The SDK's OTLP/HTTP exporter, sending requests that are already encoded."""

        def send(self, data: bytes, spans: int) -> None:
            limit = self._max_request_size
            if limit and len(data) > limit:
                log.warning(
                    "dropping %d spans: request of %d bytes over %d", spans, len(data), limit
                )
                return
            self._client.export(data)  # compression, retries, backoff; logs its own failures

    return HttpSender()


def _grpc_sender() -> _Sender:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class GrpcSender(sdk_exporter_class("grpc")):  # type: ignore[misc]
        """The SDK's OTLP/gRPC exporter, sending requests that are already encoded."""

        def _translate_data(self, data: Any) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(data[0])  # C code (upb)

        def _count_data(self, data: Any) -> int:
            return int(data[1])

        def send(self, data: bytes, spans: int) -> None:
            self._export((data, spans))  # retries, backoff; logs its own failures

    return GrpcSender()


def _records(payload: bytes) -> list[SpanRecord]:
    """The records of one ``EXPORT`` frame."""
    view = memoryview(payload)
    records: list[SpanRecord] = []
    offset = 0
    while offset < len(view):
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        # The pipe comes from our parent only (never a socket or a file): marshal is safe.
        records.extend(marshal.loads(view[offset : offset + length]))  # noqa: S302
        offset += length
    return records


def serve(protocol: str, frames: IO[bytes], tokens: IO[bytes]) -> None:
    """The child's loop: read frames until the input ends, export, echo flush tokens."""
    sender = _grpc_sender() if protocol == "grpc" else _http_sender()
    head: tuple[bytes, bytes] = (b"", b"")
    batch = 512
    try:
        while True:
            header = frames.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            kind, length = _HEADER.unpack(header)
            payload = frames.read(length)
            if len(payload) < length:
                return
            if kind == _SETUP:
                head, batch = marshal.loads(payload)  # noqa: S302 (from our parent, see above)
            elif kind == _FLUSH:
                tokens.write(payload)
                tokens.flush()
            else:
                records = _records(payload)
                for start in range(0, len(records), batch):
                    part = records[start : start + batch]
                    try:
                        data = encode_records(part, head)
                    except Unsupported as exc:
                        log.error("dropping %d spans: %s", len(part), exc)
                        continue
                    sender.send(data, len(part))
    finally:
        sender.shutdown()


def main(argv: list[str]) -> int:
    """Entry point of the child process: ``python -m phiserve.telemetry.export_process PROTOCOL``."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s phiserve span exporter %(process)d: %(message)s",
    )
    if len(argv) != 1 or argv[0] not in OTLP_PROTOCOLS:
        print(f"usage: python -m {CHILD_MODULE} {{{','.join(OTLP_PROTOCOLS)}}}", file=sys.stderr)
        return 2
    # Stdout carries the flush tokens only: anything a library prints goes to stderr instead.
    tokens = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Ctrl-C reaches the whole process group; the parent flushes and then closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(argv[0], sys.stdin.buffer, tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
