"""Builds phiserve's ASGI stack from settings: the layers every request passes through.

Outermost first: request context -> the V2 routes. Identity, audit and telemetry layers slot in
between (see :func:`build_app`). All layers are plain ASGI: no BaseHTTPMiddleware, no body
buffering outside the infer handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve.config import Settings
from phiserve.context import ContextMiddleware
from phiserve.protocol.dataplane import DataPlane
from phiserve.protocol.http import V2App, send_response


async def _no_metrics(scope: Scope, receive: Receive, send: Send) -> None:
    await send_response(send, 404, b'{"error":"metrics are disabled"}', [])


@dataclass
class Platform:
    """Everything a running server holds; started and stopped by the BentoML service."""

    settings: Settings
    dataplane: DataPlane
    app: ASGIApp

    async def start(self) -> None:
        """Load models (and open sinks) before the first request."""
        await self.dataplane.start()

    async def stop(self) -> None:
        """Drain: finish queued work, then release resources."""
        await self.dataplane.stop()


def build_platform(settings: Settings) -> Platform:
    """Compose the platform from settings. No I/O happens here; :meth:`Platform.start` does it."""
    dataplane = DataPlane(settings)
    app: ASGIApp = V2App(dataplane, settings.max_request_bytes, _no_metrics)
    app = ContextMiddleware(app)
    return Platform(settings=settings, dataplane=dataplane, app=app)
