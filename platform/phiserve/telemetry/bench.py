"""Per-request cost of the telemetry layer, in microseconds, measured in-process.

``python -m phiserve.telemetry.bench [N]`` drives ASGI stacks directly (no sockets, no HTTP
client) so that only the layers differ:

* ``bare``: ``ContextMiddleware(app)``;
* ``off``: ``ContextMiddleware(TelemetryMiddleware(app))`` with no OTLP endpoint;
* ``ratio0``: tracing configured, sampler ratio 0.0;
* ``ratio1``: tracing configured, ratio 1.0, exporting over OTLP/HTTP to a local receiver;
  the final flush is inside the timed region, so export CPU is counted.

The inner app records what the data plane will: three child spans (authenticate, decode,
encode), one ``record_inference`` (queue-wait and inference spans) and one ``observe_batch``.
:func:`measure` returns the figures for a harness such as ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from phiserve.context import ContextMiddleware, get_context
from phiserve.telemetry import (
    METRICS,
    SPAN_AUTHENTICATE,
    SPAN_DECODE,
    SPAN_ENCODE,
    TelemetryMiddleware,
    child_span,
    configure_tracing,
    force_flush,
    observe_batch,
    record_inference,
    shutdown_tracing,
)
from phiserve.telemetry.testing import OtlpHttpReceiver

_BODY = b'{"inputs": []}'


class _Timings:
    __slots__ = ("batch_size", "enqueued_ns", "finished_ns", "started_ns")

    def __init__(self, now: int) -> None:
        self.enqueued_ns, self.started_ns, self.finished_ns, self.batch_size = (
            now - 300_000,
            now - 200_000,
            now,
            8,
        )


async def _app(scope: Any, receive: Any, send: Any) -> None:
    ctx = get_context(scope)
    await receive()
    with child_span(SPAN_AUTHENTICATE):
        pass
    ctx.model, ctx.version = "bench", 1
    with child_span(SPAN_DECODE):
        pass
    timings = _Timings(time.perf_counter_ns())
    observe_batch("bench", 1, 8, timings.started_ns, timings.finished_ns)
    record_inference("bench", 1, timings, "CPUExecutionProvider")
    with child_span(SPAN_ENCODE):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _drive(app: Callable[..., Any], n: int, flush: bool) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
    for _ in range(min(n, 500)):  # warm up caches and label series
        scope = {"type": "http", "method": "POST", "path": "/v2/models/bench/infer",
                 "headers": headers, "scheme": "http", "server": ("127.0.0.1", 3000)}  # fmt: skip
        await app(scope, receive, send)
    if flush:
        force_flush()
    start = time.perf_counter()
    for _ in range(n):
        scope = {"type": "http", "method": "POST", "path": "/v2/models/bench/infer",
                 "headers": headers, "scheme": "http", "server": ("127.0.0.1", 3000)}  # fmt: skip
        await app(scope, receive, send)
    if flush:
        force_flush()
    return (time.perf_counter() - start) / n * 1e6


def measure(n: int = 20000) -> dict[str, float]:
    """Microseconds per request for each configuration, plus overheads and throughput ratios."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for k in saved:
        del os.environ[k]
    METRICS.set_known_models({"bench": [1]})
    results: dict[str, float] = {}
    try:
        bare = ContextMiddleware(_app)
        stack = ContextMiddleware(TelemetryMiddleware(_app))
        shutdown_tracing()
        results["bare_us"] = asyncio.run(_drive(bare, n, False))
        results["off_us"] = asyncio.run(_drive(stack, n, False))
        with OtlpHttpReceiver() as rx:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
            os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0.0"
            configure_tracing()
            results["ratio0_us"] = asyncio.run(_drive(stack, n, True))
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = "1.0"
            configure_tracing()
            results["ratio1_us"] = asyncio.run(_drive(stack, n, True))
            shutdown_tracing()
            results["spans_exported"] = float(len(rx.spans()))
    finally:
        shutdown_tracing()
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[k]
        os.environ.update(saved)
        METRICS.reset()
    for key in ("off", "ratio0", "ratio1"):
        results[f"{key}_overhead_us"] = results[f"{key}_us"] - results["bare_us"]
    return results


def main() -> None:
    """Print the figures."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for key, value in measure(n).items():
        print(f"{key:22s} {value:10.2f}")


if __name__ == "__main__":
    main()
