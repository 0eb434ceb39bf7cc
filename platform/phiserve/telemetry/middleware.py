"""TelemetryMiddleware: the server span, the trace id and the request metrics of each request.

Plain ASGI (no Starlette's base-middleware class: it would break streaming), placed just inside
:class:`~phiserve.context.ContextMiddleware`::

    app = ContextMiddleware(TelemetryMiddleware(router))

Per HTTP request it

* honours an incoming W3C ``traceparent`` (trace id, parent id, sampled flag; ``tracestate``
  and ``baggage`` are dropped as caller-chosen free text);
* starts a SERVER span named ``"{method} {route template}"`` with HTTP semantic-convention
  attributes (method, route template, status code, scheme, server port) and phiserve's model,
  version and request id; never the URL, path, query, headers, body or user agent;
* sets ``ctx.trace_id`` (32 hex digits, for the audit record) and answers with ``x-trace-id``
  and a W3C ``traceresponse`` header;
* counts the request and its latency by bounded labels, and tracks requests in flight.

With tracing off it still produces a trace id (the caller's, or a fresh random one) so audit
records and responses correlate, at a cost of a few microseconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from phiserve.context import RequestContext, get_context
from phiserve.telemetry import tracing
from phiserve.telemetry.metrics import METRICS, Metrics

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span
    from opentelemetry.util.types import AttributeValue
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A request cancelled before any response (client gone, server shutting down): nginx's 499.
STATUS_CLIENT_CLOSED: Final = 499

_getrandbits = random.getrandbits


class TelemetryMiddleware:
    """Server span, trace id header and request metrics; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics | None = METRICS,
        trace_open_routes: bool = False,
    ) -> None:
        """Wrap ``app``.

        ``metrics``: where request series go (``None``: record none, e.g. when
        ``metrics_enabled`` is off). ``trace_open_routes``: also trace health and metrics
        requests; off by default so probes and scrapes do not flood the trace backend (they
        are still counted).
        """
        self.app = app
        self.metrics = metrics
        self.trace_open_routes = trace_open_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        started = time.perf_counter()
        metrics = self.metrics

        parent = None
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parent = tracing.parse_traceparent(value.decode("latin-1"))
                break

        route = ctx.route
        tracer = tracing.get_tracer()
        span: Span | None = None
        otel_token: Token[Context] | None = None
        flags: int
        if tracer is not None and (route is None or self.trace_open_routes or not route.is_open):
            method = scope["method"]
            if method not in tracing.HTTP_METHODS:
                method = tracing.OTHER_METHOD
            scheme = scope.get("scheme", "http")
            server = scope.get("server")
            port = server[1] if server else None
            attrs: dict[str, AttributeValue] = {
                "http.request.method": method,
                "url.scheme": scheme,
                # ASGI leaves the port out when it is the scheme's default.
                "server.port": port if port is not None else (443 if scheme == "https" else 80),
                tracing.ATTR_REQUEST_ID: ctx.request_id,
            }
            if route is not None:
                attrs["http.route"] = route.template
                span_name = f"{method} {route.template}"
            else:
                span_name = method  # semantic conventions: no route, method only
            span = tracing.server_span(tracer, span_name, parent, attrs)
            span_context = span.get_span_context()
            trace_id, span_id = span_context.trace_id, span_context.span_id
            flags = span_context.trace_flags
            # Current in OpenTelemetry's context (even unsampled), so child spans, SDK tracers
            # and log correlation join this trace.
            otel_token = otel_context.attach(trace.set_span_in_context(span))
        elif parent is not None:
            # Not traced here: keep the caller's trace id so audit and logs still correlate.
            trace_id, span_id, flags = parent.trace_id, _getrandbits(64) or 1, 0
        else:
            trace_id, span_id, flags = _getrandbits(128) or 1, _getrandbits(64) or 1, 0

        trace_hex = f"{trace_id:032x}"
        ctx.trace_id = trace_hex
        extra_headers = (
            (b"x-trace-id", trace_hex.encode()),
            (b"traceresponse", f"00-{trace_hex}-{span_id:016x}-{flags:02x}".encode()),
        )

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        if metrics is not None:
            metrics.in_flight += 1
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_trace)
        except BaseException as exc:
            error = exc
            raise
        finally:
            status = ctx.status
            if not status:
                # No response started: the ASGI server answers 500, or nobody is listening.
                cancelled = isinstance(error, asyncio.CancelledError)
                status = STATUS_CLIENT_CLOSED if cancelled else 500
            elapsed = time.perf_counter() - started
            labeler = metrics if metrics is not None else METRICS
            # The path's model name (when it is not a known one) only selects the "_unknown"
            # label; the raw text never becomes a label value.
            named = ctx.model or (ctx.route.model if ctx.route else None)
            model_label, version_label = labeler.labels(named, ctx.version)
            if metrics is not None:
                metrics.in_flight -= 1
                metrics.observe_request(
                    model_label, version_label, ctx.route_template, status, elapsed
                )
            if span is not None:
                if otel_token is not None:  # attached with the span
                    otel_context.detach(otel_token)
                if span.is_recording():
                    _finish_server_span(span, ctx, status, error, model_label, version_label)


def _finish_server_span(
    span: Span,
    ctx: RequestContext,
    status: int,
    error: BaseException | None,
    model_label: str,
    version_label: str,
) -> None:
    attrs: dict[str, AttributeValue] = {"http.response.status_code": status}
    if model_label:
        attrs[tracing.ATTR_MODEL] = model_label
    if version_label:
        attrs[tracing.ATTR_VERSION] = version_label
    if ctx.batch_size is not None:
        attrs[tracing.ATTR_BATCH_SIZE] = ctx.batch_size
    span.set_attributes(attrs)
    if error is not None:
        tracing.record_error(span, error)
    elif status >= 500:
        # Server spans: only 5xx is an error (4xx is the client's); error.type = the code.
        span.set_attribute("error.type", str(status))
        span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
