"""The BentoML service: the composition root. It holds no business logic.

BentoML owns the process: its arbiter, the worker, start-up and shutdown hooks. Requests to the
Open Inference Protocol routes and /metrics go straight to phiserve's own ASGI stack, skipping
BentoML's per-request layers (OpenTelemetry ASGI middleware, timeout middleware, BentoML's
context middleware and router), which are not needed for these routes and cost throughput;
everything else (lifespan, BentoML's own pages) still goes through BentoML's app.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import bentoml
from _bentoml_sdk.service import Service
from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve.app import build_platform
from phiserve.config import load_settings

log = logging.getLogger("phiserve")
settings = load_settings()
platform = build_platform(settings)


def _install_lame_duck() -> None:
    """On SIGTERM, report not-ready at once but keep accepting for ``drain_delay_s``.

    The load balancer needs a moment to stop routing to us; connections that arrive meanwhile
    are still served. Only then does uvicorn's own handler stop the listener and wait for the
    in-flight requests. A second SIGTERM stops at once.
    """
    loop = asyncio.get_running_loop()
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return

    def on_sigterm(signum: int, frame: object) -> None:
        if platform.dataplane.draining:
            uvicorn_handler(signum, frame)
            return
        platform.dataplane.draining = True
        log.info("SIGTERM: not ready; draining in %.1f s", settings.drain_delay_s)
        # Thread-safe scheduling wakes the loop, which may be sleeping in its selector.
        loop.call_soon_threadsafe(
            loop.call_later, settings.drain_delay_s, uvicorn_handler, signum, frame
        )

    signal.signal(signal.SIGTERM, on_sigterm)


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
        """Decrypt and load every model version, and install the lame-duck SIGTERM handler."""
        log.setLevel(settings.log_level.upper())
        _install_lame_duck()
        await platform.start()

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Finish in-flight work, flush and seal what needs sealing."""
        await platform.stop()


Phiserve.__class__ = _PhiserveBentoService
