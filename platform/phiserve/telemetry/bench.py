"""Per-request cost of the telemetry layer, in microseconds of CPU, measured in-process.

``python -m phiserve.telemetry.bench [N]`` drives ASGI stacks directly (no sockets, no HTTP
client) so that only the layers differ:

* ``bare``: ``ContextMiddleware(app)``;
* ``off``: ``ContextMiddleware(TelemetryMiddleware(app))`` with no OTLP endpoint;
* ``ratio0``: tracing configured, sampler ratio 0.0;
* ``ratio1``: tracing configured, ratio 1.0, exporting over OTLP/HTTP to a receiver running in
  another process (like a collector); the final flush is inside the measured region, so the
  hand-over to the export process is counted.

Figures are process CPU time (all threads of this process) per request, the best of several
repeats, so other load on a shared machine barely moves them. ``ratio1_export_process_us`` is
the CPU the export child process spent per request in the same runs (encoding and sending),
which a server pays on another core. The inner app records what the
data plane does: three child spans (authenticate, decode, encode), one ``record_inference``
(queue-wait and inference spans) and one ``observe_batch``: six spans per traced request.
:func:`measure` returns the figures for a harness such as ``make bench``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
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
    tracing,
)

SPANS_PER_REQUEST = 6
_RECEIVER = (
    "import sys\n"
    "from phiserve.telemetry.testing import OtlpHttpReceiver\n"
    "rx = OtlpHttpReceiver().start()\n"
    "print(rx.endpoint, flush=True)\n"
    "sys.stdin.read()\n"
    "print(len(rx.spans()), flush=True)\n"
)


class _Timings:
    __slots__ = ("batch_size", "enqueued_ns", "finished_ns", "started_ns")

    def __init__(self, now: int) -> None:
        self.enqueued_ns, self.started_ns, self.finished_ns = now - 300_000, now - 200_000, now
        self.batch_size = 8


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


async def _drive(app: Callable[..., Any], n: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"inputs": []}', "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
    for i in range(n):
        scope = {"type": "http", "method": "POST", "path": "/v2/models/bench/infer",
                 "headers": headers, "scheme": "http", "server": ("127.0.0.1", 3000)}  # fmt: skip
        await app(scope, receive, send)
        if i % 16 == 0:
            # A server's event loop releases the GIL in every selector wait; a tight loop never
            # would, and the span pipe's thread would fall behind and drop spans.
            time.sleep(0)


def _cpu_us(app: Callable[..., Any], n: int, repeats: int) -> tuple[float, float]:
    """Best CPU us per request of this process, and of the export child in that run."""
    best, child_us = float("inf"), 0.0
    for _ in range(repeats):
        asyncio.run(_drive(app, min(n, 300)))  # warm caches and label series
        force_flush()
        child = _export_child_cpu()
        start = time.process_time()
        asyncio.run(_drive(app, n))
        force_flush()
        elapsed = (time.process_time() - start) / n * 1e6
        if elapsed < best:
            best, child_us = elapsed, (_export_child_cpu() - child) / n * 1e6
    return best, child_us


def _export_child_cpu() -> float:
    """CPU seconds used so far by the span export child process (0 when there is none)."""
    pipe = tracing._STATE.pipe
    pid = pipe.child_pid if pipe is not None else None
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(n: int = 5000, repeats: int = 5) -> dict[str, float]:
    """CPU microseconds per request for each configuration, and the overheads over ``bare``.

    Also ``spans_expected``/``spans_received`` for the ratio-1.0 runs (a shortfall means the
    exporter dropped spans because the loop outran it).
    """
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for k in saved:
        del os.environ[k]
    METRICS.set_known_models({"bench": [1]})
    results: dict[str, float] = {}
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdin is not None
        endpoint = receiver.stdout.readline().strip()
        bare = ContextMiddleware(_app)
        stack = ContextMiddleware(TelemetryMiddleware(_app))
        shutdown_tracing()
        results["bare_us"] = _cpu_us(bare, n, repeats)[0]
        results["off_us"] = _cpu_us(stack, n, repeats)[0]
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0.0"
        configure_tracing()
        results["ratio0_us"] = _cpu_us(stack, n, repeats)[0]
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "1.0"
        configure_tracing()
        results["ratio1_us"], results["ratio1_export_process_us"] = _cpu_us(stack, n, repeats)
        shutdown_tracing()
        receiver.stdin.close()
        results["spans_received"] = float(receiver.stdout.readline().strip() or 0)
        results["spans_expected"] = float(repeats * (n + min(n, 300)) * SPANS_PER_REQUEST)
    finally:
        shutdown_tracing()
        receiver.kill()
        receiver.wait()
        for k in [k for k in os.environ if k.startswith("OTEL_")]:
            del os.environ[k]
        os.environ.update(saved)
        METRICS.reset()
    for key in ("off", "ratio0", "ratio1"):
        results[f"{key}_overhead_us"] = results[f"{key}_us"] - results["bare_us"]
    return results


def main() -> None:
    """Print the figures."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    for key, value in measure(n).items():
        print(f"{key:22s} {value:12.2f}")


if __name__ == "__main__":
    main()
