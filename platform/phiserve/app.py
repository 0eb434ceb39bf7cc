"""Builds phiserve's ASGI stack from settings: the layers every request passes through.

Outermost first: request context -> telemetry (server span, metrics) -> authentication and
authorization -> the V2 routes. All layers are plain ASGI: no BaseHTTPMiddleware, no body
buffering outside the infer handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve import telemetry
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
        """Start exporters and load models before the first request (in the worker process)."""
        telemetry.configure_tracing()
        await self.dataplane.start()

    async def stop(self) -> None:
        """Drain: finish queued work, then flush telemetry and release resources."""
        await self.dataplane.stop()
        telemetry.shutdown_tracing()


def build_platform(settings: Settings) -> Platform:
    """Compose the platform from settings.

    Only configuration is read here (the JWKS, so a bad identity set-up fails before serving);
    models load in :meth:`Platform.start`.
    """
    dataplane = DataPlane(settings)
    metrics = telemetry.metrics_app if settings.metrics_enabled else _no_metrics
    app: ASGIApp = V2App(dataplane, settings.max_request_bytes, metrics)
    if settings.auth_enabled:
        app = AuthMiddleware(app, TokenVerifier.from_settings(settings))
    app = telemetry.TelemetryMiddleware(
        app, metrics=telemetry.METRICS if settings.metrics_enabled else None
    )
    app = ContextMiddleware(app)
    return Platform(settings=settings, dataplane=dataplane, app=app)
