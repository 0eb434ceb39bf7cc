"""CDS Hooks 2.0 routes: discovery, the service call and feedback, for every model with a FHIR
mapping (service id = model name, hook ``patient-view``).

    GET  /cds-services                         the services this client may call (discovery)
    POST /cds-services/{id}                    one call: prefetch -> features -> model -> card
    POST /cds-services/{id}/feedback           what the user did with cards
    GET  /model-cards/{model}/versions/{v}     a version's model card (Markdown; open: cards
                                               link it for the user's browser, it holds no PHI)

The CDS routes are guarded by the CDS client JWT (:mod:`phiserve.security.cds_client`), not by
the V2 API's OIDC tokens, and need the client's ``cds:<id>`` scope. A call:

1. reads the body (bounded) and validates it (:mod:`.schema`): hook patient-view, hookInstance a
   UUID, context userId/patientId/encounterId, prefetch an object of resources or nulls;
2. gathers the prefetch the service declared, reading what is missing from the EHR's FHIR server
   when the call lends a token, else 412 for a required key (:mod:`.prefetch`);
3. parses the resources with fhir.resources' R4B models and extracts the features of the patient
   in context (:mod:`phiserve.fhir`) off the event loop;
4. predicts through the data plane (:func:`phiserve.clinical.predict`) and renders one card
   (:mod:`.cards`), remembered for feedback (:mod:`.cardstore`).

Audit: each call's record holds the client's ``iss`` and a hash of its ``jti`` (set by the
authenticator), the hookInstance, the card's uuid, the clinical facts
(:func:`phiserve.clinical.audit_details`: decision, band, top feature names, keyed pseudonyms of
the patient, encounter and source resources) and the outcome of any FHIR server reads. Feedback
records hold the cards' uuids and the facts they were joined to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from phiserve import telemetry
from phiserve.cds import cards
from phiserve.cds.cardstore import CardStore, IssuedCard
from phiserve.cds.fetch import FhirReader
from phiserve.cds.metrics import CDS_METRICS
from phiserve.cds.prefetch import gather
from phiserve.cds.schema import PATIENT_VIEW, CdsRequest, FeedbackRequest, parse
from phiserve.clinical import Pseudonymize, audit_details, predict
from phiserve.config import CdsClient, Settings
from phiserve.context import RequestContext, get_context
from phiserve.dataplane import DataPlane
from phiserve.errors import NotFound, NotReady
from phiserve.fhir.features import FeatureVector, extract
from phiserve.fhir.mapping import FhirMapping, mapping_of, prefetch_templates, required_prefetch
from phiserve.fhir.parse import parse_resources
from phiserve.http.io import parse_json_object, read_body, send_json, send_response
from phiserve.http.routing import OPEN, Handler, RouteKind, RouteSpec
from phiserve.model import Model
from phiserve.repository.card import render_markdown
from phiserve.security.authorization import CDS_ANY, cds_scope
from phiserve.security.cds_client import CDS_CLIENT

DISCOVERY: Final = "cds_discovery"
CALL: Final = "cds_call"
FEEDBACK: Final = "cds_feedback"
MODEL_CARD: Final = "model_card"
MODEL_CARD_TEMPLATE: Final = "/model-cards/{model}/versions/{version}"
ROUTES: Final = (
    RouteSpec(DISCOVERY, "GET", "/cds-services", RouteKind.CDS, CDS_CLIENT),
    RouteSpec(CALL, "POST", "/cds-services/{model}", RouteKind.CDS, CDS_CLIENT),
    RouteSpec(FEEDBACK, "POST", "/cds-services/{model}/feedback", RouteKind.CDS, CDS_CLIENT),
    RouteSpec(MODEL_CARD, "GET", MODEL_CARD_TEMPLATE, RouteKind.DOCS, OPEN),
)
SPAN_PREFETCH: Final = "cds.prefetch"
SPAN_EXTRACT: Final = "cds.extract"
_MARKDOWN: Final = (b"content-type", b"text/markdown; charset=utf-8")


class CdsHandlers:
    """The CDS Hooks handlers, by route name (see :data:`ROUTES`)."""

    def __init__(
        self,
        dataplane: DataPlane,
        pseudonymize: Pseudonymize,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dataplane = dataplane
        self.pseudonymize = pseudonymize
        self.base_url = settings.cds_url
        self.max_request_bytes = settings.max_request_bytes
        self.max_entries = settings.fhir_max_entries
        self.future_skew = timedelta(seconds=settings.fhir_future_skew_s)
        self.fhir_timeout_s = settings.cds_fhir_timeout_s
        self.clients: Mapping[str, CdsClient] = {c.iss: c for c in settings.cds_clients}
        self.reader = FhirReader(
            max_response_bytes=settings.cds_fhir_max_response_bytes,
            max_pages=settings.cds_fhir_max_pages,
        )
        self.cards = CardStore(capacity=settings.cds_card_store_size, ttl_s=settings.cds_card_ttl_s)
        self.clock = clock

    def handlers(self) -> dict[str, Handler]:
        """Route name -> handler."""
        return {
            DISCOVERY: self.discovery,
            CALL: self.call,
            FEEDBACK: self.feedback,
            MODEL_CARD: self.model_card,
        }

    async def aclose(self) -> None:
        """Close the FHIR reader's pooled connections."""
        await self.reader.aclose()

    # --- discovery -------------------------------------------------------------------------
    async def discovery(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every service (model with a FHIR mapping, default version) this client may call."""
        ctx = get_context(scope)
        services = []
        for name in sorted(self.dataplane.known_models()):
            if not _may_call(ctx, name):
                continue
            try:
                model = self.dataplane.resolve(name, None)
            except NotReady:
                continue  # listed again once it loads
            mapping = mapping_of(model)
            if mapping is not None:
                services.append(_service(model, mapping))
        ctx.outcome = "ok"
        await send_json(send, 200, {"services": services})

    # --- the service call ------------------------------------------------------------------
    async def call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Validate, gather prefetch, extract features, predict, answer one card."""
        ctx = get_context(scope)
        model, mapping = self._service_model(ctx)
        body = await read_body(scope, receive, self.max_request_bytes)
        request: CdsRequest = parse(CdsRequest, parse_json_object(body, "request body"), "call")
        details = _details(ctx)
        details["hook_instance"] = str(request.hookInstance)
        client = self.clients.get(ctx.subject or "")
        with telemetry.child_span(SPAN_PREFETCH):
            prefetched = await gather(
                request,
                prefetch_templates(mapping),
                self.reader,
                budget_s=self.fhir_timeout_s,
                allowed_servers=client.fhir_servers if client else None,
            )
        for key, outcome in prefetched.reads.items():
            CDS_METRICS.fhir_read(key, outcome)
        if prefetched.reads:
            details["fhir_reads"] = [f"{k}:{v}" for k, v in sorted(prefetched.reads.items())]
        prefetched.require(required_prefetch(mapping))
        now = self.clock()
        with telemetry.child_span(SPAN_EXTRACT):
            # fhir.resources validation costs ~0.2 ms a resource: off the event loop.
            features = await asyncio.to_thread(
                self._features, mapping, list(prefetched.values.values()), request, now
            )
        result = await predict(self.dataplane, model, features)
        card_url = f"{self.base_url}/model-cards/{model.name}/versions/{model.version}"
        card_id, card = cards.card(result, features, model_card_url=card_url)
        patient = self.pseudonymize("patient", features.patient.id)
        self.cards.add(
            card_id,
            IssuedCard(
                model=model.name,
                version=model.version,
                decision=result.decision,
                patient=patient,
                hook_instance=str(request.hookInstance),
            ),
        )
        CDS_METRICS.card_issued(model.name, model.version, result.decision)
        details.update(audit_details(result, features, self.pseudonymize))
        details["card"] = str(card_id)
        ctx.batch_size = 1
        ctx.outcome = "ok"  # before the response starts: the audit reads it then
        await send_json(send, 200, {"cards": [card]})

    def _features(
        self, mapping: FhirMapping, values: list[dict[str, Any]], request: CdsRequest, now: datetime
    ) -> FeatureVector:
        started = time.thread_time()
        resources = parse_resources(values, max_entries=self.max_entries)
        parsed = time.thread_time()
        features = extract(
            mapping,
            resources,
            patient_id=request.context.patientId,
            encounter_id=request.context.encounterId,
            now=now,
            future_skew=self.future_skew,
        )
        CDS_METRICS.fhir_cpu(parsed - started, time.thread_time() - parsed)
        return features

    # --- feedback --------------------------------------------------------------------------
    async def feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Join each item to its card; audit and count them; 404 if any card is unknown."""
        ctx = get_context(scope)
        model, _ = self._service_model(ctx)
        body = await read_body(scope, receive, self.max_request_bytes)
        report: FeedbackRequest = parse(
            FeedbackRequest, parse_json_object(body, "request body"), "feedback"
        )
        joined: list[IssuedCard] = []
        for i, item in enumerate(report.feedback):
            card = self.cards.get(item.card)
            if card is None or card.model != model.name:
                # Nothing is recorded or counted unless every item joins: a retry is safe.
                raise NotFound(
                    f"feedback[{i}].card: no card with this uuid was issued by this service "
                    "(or it expired)"
                )
            joined.append(card)
        reasons = []
        for item, card in zip(report.feedback, joined, strict=True):
            reason = _reason(item.overrideReason.reason if item.overrideReason else None)
            reasons.append(reason)
            CDS_METRICS.feedback(card.model, card.version, item.outcome, reason)
        details = _details(ctx)
        details.update(
            cards=[str(item.card) for item in report.feedback],
            outcomes=[item.outcome for item in report.feedback],
            override_reasons=reasons,
            # Whether the user wrote a comment; the comment itself is free text, never kept.
            comments=[
                bool(item.overrideReason and item.overrideReason.userComment)
                for item in report.feedback
            ],
            card_versions=[f"{c.model}/{c.version}" for c in joined],
            card_decisions=[c.decision for c in joined],
            card_patients=[c.patient for c in joined],
            hook_instances=[c.hook_instance for c in joined],
        )
        ctx.outcome = "ok"
        await send_json(send, 200, {})

    # --- model card ------------------------------------------------------------------------
    async def model_card(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The version's model card, rendered from its authenticated manifest."""
        ctx = get_context(scope)
        model = self.dataplane.resolve_for(ctx)
        text = render_markdown(model.manifest.card)
        ctx.outcome = "ok"
        await send_response(send, 200, text.encode(), [_MARKDOWN])

    # --- helpers ---------------------------------------------------------------------------
    def _service_model(self, ctx: RequestContext) -> tuple[Model, FhirMapping]:
        route = ctx.route
        assert route is not None  # the router dispatched on it
        try:
            model = self.dataplane.resolve(route.model, None)
        except NotFound:
            raise NotFound("unknown CDS service") from None
        mapping = mapping_of(model)
        if mapping is None:
            raise NotFound("unknown CDS service")
        ctx.model, ctx.version = model.name, model.version
        return model, mapping


def _service(model: Model, mapping: FhirMapping) -> dict[str, Any]:
    """One discovery entry."""
    details = model.manifest.card.get("model_details", {})
    entry = {
        "hook": PATIENT_VIEW,
        "id": model.name,
        "title": f"{model.name}: risk of {mapping.outcome}",
        "description": details.get("overview") or f"Risk of {mapping.outcome}.",
        "prefetch": prefetch_templates(mapping),
    }
    if intended := model.manifest.card.get("intended_use"):
        entry["usageRequirements"] = intended
    return entry


def _may_call(ctx: RequestContext, service: str) -> bool:
    # Without authentication (PHISERVE_AUTH_ENABLED=false) there is no client to limit.
    if ctx.subject is None:
        return True
    return CDS_ANY in ctx.scopes or cds_scope(service) in ctx.scopes


def _details(ctx: RequestContext) -> dict[str, Any]:
    """The request's audit details (the authenticator may have started them)."""
    if ctx.audit_details is None:
        ctx.audit_details = {}
    return ctx.audit_details


def _reason(coding: Any) -> str:
    """The override reason as a bounded label: one of the cards' codes, ``other`` or ``none``."""
    if coding is None:
        return "none"
    if coding.system == cards.OVERRIDE_SYSTEM and coding.code in cards.OVERRIDE_REASONS:
        return coding.code
    return "other"
