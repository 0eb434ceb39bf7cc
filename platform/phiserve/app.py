"""Builds phiserve's ASGI stack from settings: the layers every request passes through.

Outermost first: request context -> authentication and authorization -> the V2 routes. All
layers are plain ASGI: no BaseHTTPMiddleware, no body buffering outside the infer handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve.config import Settings
from phiserve.context import ContextMiddleware
from phiserve.protocol.dataplane import DataPlane
from phiserve.protocol.http import V2App, send_response
from phiserve.security import AuthMiddleware, TokenVerifier


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
    """Compose the platform from settings.

    Only configuration is read here (the JWKS, so a bad identity set-up fails before serving);
    models load in :meth:`Platform.start`.
    """
    dataplane = DataPlane(settings)
    app: ASGIApp = V2App(dataplane, settings.max_request_bytes, _no_metrics)
    if settings.auth_enabled:
        app = AuthMiddleware(app, TokenVerifier.from_settings(settings))
    app = ContextMiddleware(app)
    return Platform(settings=settings, dataplane=dataplane, app=app)
