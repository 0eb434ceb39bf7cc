"""Fixtures for the telemetry tests: a real OTLP receiver, OTEL_* environments, a tiny app.

The receivers live in :mod:`tests.telemetry.receivers`, which end-to-end tests against the real
server use too (start one, pass ``rx.endpoint`` in ``OTEL_EXPORTER_OTLP_ENDPOINT`` to the server
process, then ``rx.wait_for_spans(...)``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phiserve import telemetry
from phiserve.context import ContextMiddleware, RequestContext, get_context
from phiserve.errors import NotFound, PhiserveError, send_error
from tests.routes import TABLE
from tests.telemetry.receivers import OtlpHttpReceiver

CANARY = "CANARY-5e1f0d-PHI"
KNOWN_MODELS = {"sepsis": [1, 2]}


class _AnyName:
    def __contains__(self, name: object) -> bool:
        return True


_ANY_NAME = _AnyName()
PROVIDER = "CPUExecutionProvider"


# --- OTLP receiver and environment --------------------------------------------------------------
@pytest.fixture
def otlp_receiver() -> Iterator[OtlpHttpReceiver]:
    """A real OTLP/HTTP receiver on a free local port."""
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., telemetry.TracingStatus]]:
    """``configure(**env)``: clear every OTEL_* variable, set ``env``, configure tracing."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)

    def configure(**env: str) -> telemetry.TracingStatus:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return telemetry.configure_tracing()

    yield configure
    telemetry.shutdown_tracing()


@pytest.fixture
def traced(
    otlp_receiver: OtlpHttpReceiver, otel_env: Callable[..., telemetry.TracingStatus]
) -> OtlpHttpReceiver:
    """Tracing on, every trace sampled, exporting over OTLP/HTTP to ``otlp_receiver``."""
    status = otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_HEADERS="x-collector-tenant=phiserve-tests",
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="1.0",
        OTEL_SERVICE_NAME="phiserve-under-test",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test,service.namespace=clinical",
    )
    assert status.enabled, status
    return otlp_receiver


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[telemetry.Metrics]:
    """The process metrics, emptied, with the toy model versions known."""
    telemetry.METRICS.reset()
    telemetry.set_known_models(KNOWN_MODELS)
    yield telemetry.METRICS
    telemetry.METRICS.reset()


# --- a tiny app shaped like the data plane ------------------------------------------------------
@dataclass
class FakeTimings:
    """What the batcher hands back, in perf_counter_ns."""

    enqueued_ns: int
    started_ns: int = 0
    finished_ns: int = 0
    batch_size: int = 0


@dataclass
class TinyApp:
    """ASGI app calling the telemetry API the way the lead's handlers will.

    POST /v2/models/{m}[/versions/{v}]/infer: authenticate, decode, queue + inference (recorded
    after the fact), encode; body ``fail-400`` raises a PhiserveError in decode (sent as 400),
    ``crash`` raises an arbitrary exception carrying the canary out of the app. Every other
    matched route answers 200 ``{}``; unmatched paths 404.
    """

    contexts: list[RequestContext] = field(default_factory=list)
    seen: list[dict[str, Any]] = field(default_factory=list)
    hold: asyncio.Event | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        ctx = get_context(scope)
        self.contexts.append(ctx)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append({"headers": dict(scope["headers"]), "body": body})
        if self.hold is not None:
            await self.hold.wait()
        try:
            if ctx.route is None:
                raise NotFound("no such route")
            if ctx.route.kind == "infer":
                await self._infer(ctx, body)
            await _reply(send, 200, b"{}")
        except PhiserveError as exc:
            await send_error(send, exc)

    async def _infer(self, ctx: RequestContext, body: bytes) -> None:
        with telemetry.child_span(telemetry.SPAN_AUTHENTICATE):
            pass
        if ctx.model not in KNOWN_MODELS:
            raise NotFound("unknown model")
        ctx.version = ctx.version or max(KNOWN_MODELS[ctx.model])  # the version policy
        with telemetry.child_span(telemetry.SPAN_DECODE, **{"phiserve.inputs": 1}):
            if body == b"fail-400":
                from phiserve.errors import BadRequest

                raise BadRequest(f"bad tensor {CANARY}")  # message must not reach telemetry
            if body == b"crash":
                raise RuntimeError(f"unexpected failure holding {CANARY}")
        timings = FakeTimings(time.perf_counter_ns())
        await asyncio.sleep(0.002)  # waiting in the queue
        timings.started_ns = time.perf_counter_ns()
        await asyncio.sleep(0.003)  # the batch runs
        timings.finished_ns = time.perf_counter_ns()
        timings.batch_size = 4
        telemetry.observe_batch(ctx.model, ctx.version, 4, timings.started_ns, timings.finished_ns)
        telemetry.record_inference(ctx.model, ctx.version, timings, PROVIDER)
        ctx.batch_size = 4
        with telemetry.child_span(telemetry.SPAN_ENCODE):
            pass


async def _reply(send: Callable, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Router:
    """GET /metrics to the metrics app, everything else to the tiny app, inside the layers."""

    def __init__(self, tiny: TinyApp) -> None:
        self.tiny = tiny

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await telemetry.metrics_app(scope, receive, send)
        else:
            await self.tiny(scope, receive, send)


@dataclass
class Harness:
    """The stack under test and a way to drive it."""

    tiny: TinyApp
    app: Any

    def run(self, fn: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        """Run ``fn(client)`` against the app on a fresh event loop."""

        async def go() -> Any:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://phiserve") as c:
                return await fn(c)

        return asyncio.run(go())

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request."""
        return self.run(lambda c: c.request(method, url, **kwargs))

    def scrape(self) -> dict[str, Any]:
        """GET /metrics, parsed: family name -> family."""
        response = self.request("GET", "/metrics")
        assert response.status_code == 200
        return {f.name: f for f in text_string_to_metric_families(response.text)}


@pytest.fixture
def harness() -> Harness:
    """ContextMiddleware(TelemetryMiddleware(router)) with the tiny app."""
    tiny = TinyApp()
    # Every path model passes the context's filter: these tests exercise telemetry's own bounds.
    app = ContextMiddleware(telemetry.TelemetryMiddleware(Router(tiny)), TABLE, lambda: _ANY_NAME)
    return Harness(tiny, app)


def one_request(app: Callable) -> None:
    """GET /v2 through ContextMiddleware(TelemetryMiddleware(app))."""
    Harness(None, ContextMiddleware(telemetry.TelemetryMiddleware(app), TABLE)).request(  # type: ignore[arg-type]
        "GET", "/v2"
    )


async def reply_ok(send: Callable) -> None:
    """An empty 200 response."""
    await _reply(send, 200, b"")


def samples(family: Any, suffix: str = "", **labels: str) -> list[Any]:
    """Samples of ``family`` named ``family.name + suffix`` whose labels include ``labels``."""
    return [
        s
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
