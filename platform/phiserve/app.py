"""Builds phiserve's ASGI stack from settings: the layers every request passes through.

Outermost first: request context -> telemetry (server span, metrics) -> audit (one durable
record per request, allowed or refused) -> authentication and authorization -> the V2 routes.
All layers are plain ASGI callables (no Starlette base-middleware class, which breaks streaming),
and only the infer handler reads the body.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve import telemetry
from phiserve.audit import AuditMiddleware, AuditWriter
from phiserve.config import Settings
from phiserve.context import ContextMiddleware
from phiserve.crypto import key_provider_from_settings
from phiserve.errors import NotFound, send_error
from phiserve.protocol.dataplane import DataPlane
from phiserve.protocol.http import V2App
from phiserve.runtime.gc_tuning import tune_gc
from phiserve.security import AuthMiddleware, TokenVerifier


async def _no_metrics(scope: Scope, receive: Receive, send: Send) -> None:
    await send_error(send, NotFound("metrics are disabled (PHISERVE_METRICS_ENABLED=false)"))


@dataclass
class Platform:
    """Everything a running server holds; started and stopped by the BentoML service."""

    settings: Settings
    dataplane: DataPlane
    app: ASGIApp
    audit: AuditWriter | None

    async def start(self) -> None:
        """Open the audit trail, start exporters and load models (in the worker process)."""
        telemetry.configure_tracing()
        if self.audit:
            # Recovers a torn tail from a crash; raises on a tampered trail.
            await asyncio.to_thread(self.audit.start)
        await self.dataplane.start()
        tune_gc(self.settings.gc_thresholds)

    async def stop(self) -> None:
        """Drain: finish queued work, seal the audit segment, flush telemetry."""
        await self.dataplane.stop()
        if self.audit:
            await self.audit.aclose()
        telemetry.shutdown_tracing()


def build_platform(settings: Settings) -> Platform:
    """Compose the platform from settings.

    Only configuration and keys are read here (the JWKS, the audit key provider), so a bad
    set-up fails before serving; models load and the audit trail opens in :meth:`Platform.start`.
    """
    dataplane = DataPlane(settings)
    metrics = telemetry.metrics_app if settings.metrics_enabled else _no_metrics
    app: ASGIApp = V2App(dataplane, settings.max_request_bytes, metrics)
    if settings.auth_enabled:
        app = AuthMiddleware(app, TokenVerifier.from_settings(settings))
    audit = None
    if settings.audit_enabled:
        provider = key_provider_from_settings(settings, purpose="audit")
        audit = AuditWriter.from_settings(settings, provider, stream=settings.audit_stream)
        dataplane.health_checks["audit trail"] = lambda: audit.healthy
        app = AuditMiddleware(app, audit)
    app = telemetry.TelemetryMiddleware(
        app, metrics=telemetry.METRICS if settings.metrics_enabled else None
    )
    app = ContextMiddleware(app, dataplane.known_models)
    return Platform(settings=settings, dataplane=dataplane, app=app, audit=audit)
