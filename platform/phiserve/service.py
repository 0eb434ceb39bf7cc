"""The BentoML service: the composition root. It holds no business logic.

BentoML owns the process: its arbiter, the worker, start-up and shutdown hooks. Requests to the
Open Inference Protocol routes and /metrics go straight to phiserve's own ASGI stack, skipping
BentoML's per-request layers (OpenTelemetry ASGI middleware, timeout middleware, BentoML's
context middleware and router), which are not needed for these routes and cost throughput;
everything else (lifespan, BentoML's own pages) still goes through BentoML's app.
"""

from __future__ import annotations

import signal

import bentoml
from _bentoml_sdk.service import Service
from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve.app import build_platform
from phiserve.config import Settings

settings = Settings()
platform = build_platform(settings)


class _FastPath:
    """Routes phiserve's paths to its own stack and the rest to BentoML's app."""

    def __init__(self, ours: ASGIApp, bento: ASGIApp) -> None:
        self.ours, self.bento = ours, bento

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path.startswith("/v2") or path == "/metrics"):
            await self.ours(scope, receive, send)
        else:
            await self.bento(scope, receive, send)


class _PhiserveBentoService(Service):
    # Same layout as BentoML's slotted Service, so an instance can take this class.
    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> ASGIApp:
        """BentoML's app with phiserve's fast path in front of it."""
        return _FastPath(platform.app, super().to_asgi(is_main))


@bentoml.service(
    name="phiserve",
    workers=1,
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    traffic={"timeout": int(settings.request_timeout_s) + 5},
)
class Phiserve:
    """Loads the encrypted model repository at start-up and drains it on shutdown."""

    @bentoml.on_startup
    async def start(self) -> None:
        """Decrypt and load every model version; mark not-ready as soon as SIGTERM arrives."""
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: object) -> None:
            platform.dataplane.draining = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        await platform.start()

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Finish in-flight work, flush and seal what needs sealing."""
        await platform.stop()


Phiserve.__class__ = _PhiserveBentoService
