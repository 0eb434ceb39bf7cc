"""The BentoML service: the composition root that BentoML runs (``bentoml serve``) and packages
(``bentoml build``). It holds no business logic.

BentoML owns the process: its arbiter, the worker, start-up and shutdown hooks. phiserve's ASGI
stack is installed with BentoML's public ``add_asgi_middleware``, in front of BentoML's router:
every HTTP request (and websocket) goes through phiserve's context, telemetry, audit and auth
layers and its own router, so BentoML's generated routes (``/livez``, ``/readyz``, docs pages,
``/schema.json``) do not exist; only lifespan events reach BentoML's app. BentoML's own
per-request layers that stay in front are configured off through its service config: no access
log, no BentoML metrics, and its OpenTelemetry ASGI middleware excludes every URL (it would
record URLs, which may carry PHI; phiserve traces each request itself).

Nothing is built at import time but settings (read from the environment): the platform (JWKS,
key providers, models, audit trail) is built in the worker's start-up hook.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import bentoml
from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve.app import Platform, build_platform
from phiserve.config import load_settings
from phiserve.errors import NotReady, send_error

log = logging.getLogger("phiserve")
settings = load_settings()
# BentoML's TimeoutMiddleware stays in front; phiserve's own deadline answers first (504).
_BENTOML_TIMEOUT_S = int(settings.request_timeout_s) + 5


class PlatformGate:
    """ASGI middleware (BentoML's public ``add_asgi_middleware``): phiserve answers every
    HTTP and websocket request; BentoML's app sees only lifespan events."""

    platform: Platform | None = None  # set by the start-up hook, in the worker

    def __init__(self, app: ASGIApp) -> None:
        self.bento = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route by scope type."""
        if scope["type"] == "lifespan":
            await self.bento(scope, receive, send)
            return
        platform = PlatformGate.platform
        if platform is None:  # cannot happen once start-up finished; answer, never forward
            if scope["type"] == "http":
                await send_error(send, NotReady("server is starting"))
            return
        await platform.app(scope, receive, send)


def _install_lame_duck(platform: Platform) -> None:
    """On SIGTERM, report not-ready at once but keep accepting for ``drain_delay_s``.

    The load balancer needs a moment to stop routing to us; connections that arrive meanwhile
    are still served. Only then does uvicorn's own handler stop the listener and wait for the
    in-flight requests. A second SIGTERM stops at once.
    """
    loop = asyncio.get_running_loop()
    uvicorn_handler = signal.getsignal(signal.SIGTERM)
    if not callable(uvicorn_handler):
        return
    dataplane = platform.dataplane
    delay = platform.settings.drain_delay_s

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if dataplane.draining:
            uvicorn_handler(signum, frame)
            return
        dataplane.draining = True
        log.info("SIGTERM: not ready; draining in %.1f s", delay)
        # Thread-safe scheduling wakes the loop, which may be sleeping in its selector.
        loop.call_soon_threadsafe(loop.call_later, delay, uvicorn_handler, signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


@bentoml.service(
    name="phiserve",
    workers=1,
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
    tracing={"excluded_urls": ".*"},
    traffic={"timeout": _BENTOML_TIMEOUT_S},
)
class Phiserve:
    """Loads the encrypted model repository at start-up and drains it on shutdown."""

    @bentoml.on_startup
    async def start(self) -> None:
        """Build the platform, decrypt and load every model version, install the drain."""
        log.setLevel(settings.log_level.upper())
        platform = build_platform(settings)
        _install_lame_duck(platform)
        await platform.start()
        PlatformGate.platform = platform

    @bentoml.on_shutdown
    async def stop(self) -> None:
        """Finish in-flight work, flush and seal what needs sealing."""
        if PlatformGate.platform is not None:
            await PlatformGate.platform.stop()


# mypy does not apply class decorators (python/mypy#3135): bentoml.service made this a Service.
Phiserve.add_asgi_middleware(PlatformGate)  # type: ignore[attr-defined]
