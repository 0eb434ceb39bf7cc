"""Builds phiserve from settings: the models, the data plane and the layers every request
passes through. Wiring only; each piece lives in the folder named for its concern.

Outermost first: request context (route matched once) -> telemetry (server span, metrics) ->
audit (one durable record per request, allowed or refused) -> FHIR routes' errors as
OperationOutcome -> authentication and authorization -> the router, which dispatches to the V2
handlers, the FHIR and DICOM routes, the CDS Hooks services and /metrics. All layers are plain
ASGI callables (no Starlette base-middleware class, which breaks streaming), and only the handlers
read the body.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve import telemetry
from phiserve.audit import AuditMiddleware, AuditWriter
from phiserve.audit.pseudonym import pseudonym
from phiserve.cds import ROUTES as CDS_ROUTES
from phiserve.cds import CdsHandlers
from phiserve.config import Settings
from phiserve.context import ContextMiddleware
from phiserve.crypto import key_provider_from_settings
from phiserve.dataplane import DataPlane
from phiserve.deferral.hook import deferral_hook
from phiserve.deferral.metrics import DEFERRALS
from phiserve.dicom import dicom_hook
from phiserve.dicom.http import ROUTES as DICOM_ROUTES
from phiserve.dicom.http import DicomHandlers, DicomLimits
from phiserve.errors import ConfigurationError, NotFound, send_error
from phiserve.explain.hook import explanation_hook
from phiserve.fhir.http import ROUTES as FHIR_ROUTES
from phiserve.fhir.http import FhirHandlers
from phiserve.fhir.mapping import mapping_hook
from phiserve.fhir.outcome import OperationOutcomeLayer
from phiserve.http.routing import BEARER, OPEN, Handler, RouteKind, Router, RouteSpec, RouteTable
from phiserve.monitoring import OUTCOME_ROUTE, Monitor, OutcomeHandlers
from phiserve.protocol.http import ROUTES as V2_ROUTES
from phiserve.protocol.http import V2Handlers
from phiserve.registry import ModelRegistry
from phiserve.repository.store import ModelRepository
from phiserve.runtime import runtimes
from phiserve.runtime.gc_tuning import tune_gc
from phiserve.security import Authenticator, AuthMiddleware, BearerAuthenticator, TokenVerifier
from phiserve.security.cds_client import CDS_CLIENT, CdsClientAuthenticator

METRICS_ROUTE = RouteSpec("metrics", "GET", "/metrics", RouteKind.METRICS, OPEN)


async def _no_metrics(scope: Scope, receive: Receive, send: Send) -> None:
    await send_error(send, NotFound("metrics are disabled (PHISERVE_METRICS_ENABLED=false)"))


@dataclass
class Platform:
    """Everything a running server holds; started and stopped by the BentoML service."""

    settings: Settings
    dataplane: DataPlane
    routes: RouteTable
    app: ASGIApp
    audit: AuditWriter | None
    cds: CdsHandlers
    monitor: Monitor | None = None
    dicom: DicomHandlers | None = None

    async def start(self) -> None:
        """Open the audit trail, start exporters and load models (in the worker process)."""
        telemetry.configure_tracing()
        if self.audit:
            # Recovers a torn tail from a crash; raises on a tampered trail.
            await asyncio.to_thread(self.audit.start)
        if self.monitor:
            self.monitor.start()
        if self.dicom:
            self.dicom.decoders.start()
        await self.dataplane.start()
        tune_gc(self.settings.gc_thresholds)

    async def stop(self) -> None:
        """Drain: finish queued work, seal the audit segment, flush telemetry."""
        await self.dataplane.stop()
        await self.cds.aclose()
        if self.monitor:
            await asyncio.to_thread(self.monitor.stop)
        if self.dicom:
            await asyncio.to_thread(self.dicom.decoders.close)
        if self.audit:
            await self.audit.aclose()
        telemetry.shutdown_tracing()


def build_platform(settings: Settings) -> Platform:
    """Compose the platform from settings.

    Only configuration and keys are read here (the JWKS, the audit key provider), so a bad
    set-up fails before serving; models load and the audit trail opens in :meth:`Platform.start`.
    """
    audit = None
    if settings.audit_enabled:
        provider = key_provider_from_settings(settings, purpose="audit")
        audit = AuditWriter.from_settings(settings, provider, stream=settings.audit_stream)
    # Audit details name identifiers by pseudonym; without a trail, under a random process key.
    pseudonymize = audit.pseudonym if audit else partial(pseudonym, os.urandom(32))
    monitor = Monitor.from_settings(settings) if settings.monitoring_enabled else None
    registry = ModelRegistry(
        ModelRepository(settings.repository_dir),
        partial(key_provider_from_settings, settings),
        runtimes(settings),
        pinned_versions=settings.pinned_versions,
        # Per version, in this order: DICOM preprocessing and FHIR mapping (validated; no work
        # per request), explanations, deferral, monitoring; later hooks see the parameters
        # earlier ones add.
        hooks=(dicom_hook, mapping_hook, explanation_hook, deferral_hook)
        + ((monitor.hook_factory,) if monitor else ()),
    )
    dataplane = DataPlane(registry, request_timeout_s=settings.request_timeout_s)
    if monitor:
        monitor.health_checks = dataplane.health_checks
    specs = [*V2_ROUTES, *FHIR_ROUTES, *DICOM_ROUTES, *CDS_ROUTES, METRICS_ROUTE]
    v2 = V2Handlers(dataplane, settings.max_request_bytes)
    fhir = FhirHandlers(
        dataplane,
        pseudonymize,
        max_request_bytes=settings.max_request_bytes,
        max_entries=settings.fhir_max_entries,
        future_skew=timedelta(seconds=settings.fhir_future_skew_s),
    )
    dicom = DicomHandlers(dataplane, DicomLimits.from_settings(settings), pseudonymize)
    cds = CdsHandlers(dataplane, pseudonymize, settings)
    metrics = telemetry.metrics_app if settings.metrics_enabled else _no_metrics
    if settings.metrics_enabled:
        DEFERRALS.register(telemetry.METRICS.registry)
    handlers: dict[str, Handler] = {
        **v2.handlers(),
        **fhir.handlers(),
        **dicom.handlers(),
        **cds.handlers(),
        METRICS_ROUTE.name: metrics,
    }
    if monitor:
        specs.append(OUTCOME_ROUTE)
        handlers.update(OutcomeHandlers(dataplane, monitor, pseudonymize).handlers())
    routes = RouteTable(specs)
    app: ASGIApp = Router(handlers)
    if settings.auth_enabled:
        authenticators: dict[str, Authenticator] = {
            BEARER: BearerAuthenticator(TokenVerifier.from_settings(settings)),
            CDS_CLIENT: CdsClientAuthenticator.from_settings(settings),
        }
        _check_authenticators(routes, authenticators)
        app = AuthMiddleware(app, authenticators)
    app = OperationOutcomeLayer(app, fhir.handlers())
    if audit:
        dataplane.health_checks["audit trail"] = lambda: audit.healthy
        app = AuditMiddleware(app, audit)
    app = telemetry.TelemetryMiddleware(
        app, metrics=telemetry.METRICS if settings.metrics_enabled else None
    )
    app = ContextMiddleware(app, routes, dataplane.known_models)
    return Platform(
        settings=settings,
        dataplane=dataplane,
        routes=routes,
        app=app,
        audit=audit,
        cds=cds,
        monitor=monitor,
        dicom=dicom,
    )


def _check_authenticators(routes: RouteTable, authenticators: dict[str, Authenticator]) -> None:
    schemes = {spec.auth for spec in routes.specs} - {OPEN}
    if missing := sorted(schemes - authenticators.keys()):
        raise ConfigurationError(f"routes need authenticators that are not configured: {missing}")
