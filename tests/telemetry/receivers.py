"""Real OTLP trace receivers (HTTP and gRPC) that decode what the exporter sends.

Unit tests and end-to-end tests against a real ``phiserve serve`` process use them::

    with OtlpHttpReceiver() as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        ...start the server with env, send requests...
        spans = rx.wait_for_spans(lambda spans: len(spans) >= 6, timeout_s=10)

``opentelemetry-proto`` is a dependency of the OTLP exporters, so this imports wherever the
exporter does.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan


def any_value(value: AnyValue) -> Any:
    """A protobuf ``AnyValue`` as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict."""
    return {kv.key: any_value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span with its resource and instrumentation scope, decoded."""

    span: PbSpan
    resource: dict[str, Any]
    scope: str

    @property
    def name(self) -> str:
        """Span name."""
        return self.span.name

    @property
    def trace_id(self) -> str:
        """Trace id, 32 hex digits."""
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        """Span id, 16 hex digits."""
        return self.span.span_id.hex()

    @property
    def parent_span_id(self) -> str:
        """Parent span id, 16 hex digits, or ``""`` for a root span."""
        return self.span.parent_span_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        """Span attributes as a dict."""
        return attributes(self.span.attributes)


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.bodies: list[bytes] = []  # raw (decompressed) protobuf payloads, for canary scans
        self.headers: list[dict[str, str]] = []
        self.spans: list[ReceivedSpan] = []

    def add(self, body: bytes, headers: dict[str, str]) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            ReceivedSpan(span, attributes(rs.resource.attributes), ss.scope.name)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self.lock:
            self.bodies.append(body)
            self.headers.append(headers)
            self.spans.extend(spans)
            self.lock.notify_all()


class _Receiver:
    """Shared read side of both receivers."""

    _store: _Store

    @property
    def requests(self) -> int:
        """Export requests received so far."""
        with self._store.lock:
            return len(self._store.bodies)

    @property
    def raw(self) -> bytes:
        """Every payload received, concatenated (scan it for canaries)."""
        with self._store.lock:
            return b"".join(self._store.bodies)

    @property
    def headers(self) -> list[dict[str, str]]:
        """Headers (or gRPC metadata) of each export request, names lower-cased."""
        with self._store.lock:
            return list(self._store.headers)

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._store.lock:
            return list(self._store.spans)

    def clear(self) -> None:
        """Forget everything received."""
        with self._store.lock:
            self._store.bodies.clear()
            self._store.headers.clear()
            self._store.spans.clear()

    def wait_for_spans(
        self,
        condition: Callable[[list[ReceivedSpan]], bool] = bool,
        timeout_s: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Block until ``condition(spans)`` holds; raises ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        with self._store.lock:
            while not condition(list(self._store.spans)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"OTLP receiver: condition unmet, {len(self._store.spans)} spans"
                    )
                self._store.lock.wait(remaining)
            return list(self._store.spans)


class OtlpHttpReceiver(_Receiver):
    """An OTLP/HTTP (protobuf) trace receiver on ``127.0.0.1`` and a free port.

    Accepts ``POST /v1/traces`` (gzip or deflate bodies too) and answers like a collector.
    A ``hung`` receiver stands for a collector that stopped answering: it records each export,
    sets :attr:`holding`, and replies only once :attr:`release` is set (by the test, or by
    :meth:`stop`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, hung: bool = False) -> None:
        store = self._store = _Store()
        self.holding = threading.Event()
        self.release = threading.Event()
        if not hung:
            self.release.set()
        holding, release = self.holding, self.release

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real collector

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                store.add(body, {k.lower(): v for k, v in self.headers.items()})
                holding.set()
                release.wait()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        """Base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OtlpHttpReceiver:
        """Start serving in a daemon thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpHttpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class OtlpGrpcReceiver(_Receiver):
    """An OTLP/gRPC trace receiver (insecure) on ``127.0.0.1`` and a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        store = self._store = _Store()

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> ExportTraceServiceResponse:
                metadata = {k.lower(): v for k, v in context.invocation_metadata()}
                store.add(request.SerializeToString(), metadata)
                return ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        self._port = self._server.add_insecure_port(f"{host}:0")
        self._host = host

    @property
    def endpoint(self) -> str:
        """URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``."""
        return f"http://{self._host}:{self._port}"

    def start(self) -> OtlpGrpcReceiver:
        """Start serving."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop(grace=None)

    def __enter__(self) -> OtlpGrpcReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
