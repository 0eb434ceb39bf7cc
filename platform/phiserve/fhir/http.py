"""The direct FHIR route, for systems that are not CDS Hooks clients.

``POST /fhir/r4/models/{model}[/versions/{version}]/$predict`` with a FHIR R4 Bundle or
Parameters (``application/fhir+json``) holding exactly one Patient and that patient's Encounter
and Observations; the answer is a RiskAssessment (:mod:`.risk`), errors are OperationOutcome
resources (:mod:`.outcome`). The route needs the model's infer scope, like the V2 infer route,
and its audit record carries the clinical facts (:func:`phiserve.clinical.audit_details`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from phiserve import telemetry
from phiserve.clinical import Pseudonymize, audit_details, predict
from phiserve.context import get_context
from phiserve.dataplane import DataPlane
from phiserve.errors import BadRequest, NotFound, Unprocessable
from phiserve.fhir.features import FeatureVector, extract
from phiserve.fhir.mapping import FhirMapping, mapping_of
from phiserve.fhir.outcome import FHIR_JSON
from phiserve.fhir.parse import parse_resources
from phiserve.fhir.risk import risk_assessment
from phiserve.http.io import parse_json_object, read_body, send_json
from phiserve.http.routing import Handler, RouteKind, RouteSpec

PREDICT: Final = "fhir_predict"
ROUTES: Final = (
    RouteSpec(PREDICT, "POST", "/fhir/r4/models/{model}/$predict", RouteKind.INFER),
    RouteSpec(
        PREDICT, "POST", "/fhir/r4/models/{model}/versions/{version}/$predict", RouteKind.INFER
    ),
)
SPAN_EXTRACT: Final = "fhir.extract"
_INPUTS: Final = frozenset({"Bundle", "Parameters"})


class FhirHandlers:
    """The direct FHIR route's handler, by route name (see :data:`ROUTES`)."""

    def __init__(
        self,
        dataplane: DataPlane,
        pseudonymize: Pseudonymize,
        *,
        max_request_bytes: int,
        max_entries: int,
        future_skew: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dataplane = dataplane
        self.pseudonymize = pseudonymize
        self.max_request_bytes = max_request_bytes
        self.max_entries = max_entries
        self.future_skew = future_skew
        self.clock = clock

    def handlers(self) -> dict[str, Handler]:
        """Route name -> handler."""
        return {PREDICT: self.predict}

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bundle or Parameters in, RiskAssessment out."""
        ctx = get_context(scope)
        model = self.dataplane.resolve_for(ctx)
        mapping = mapping_of(model)
        if mapping is None:
            raise NotFound(f"model {model.name!r} has no FHIR mapping")
        body = await read_body(scope, receive, self.max_request_bytes)
        doc = parse_json_object(body, "request body")
        if doc.get("resourceType") not in _INPUTS:
            raise BadRequest("the request body must be a FHIR Bundle or Parameters resource")
        now = self.clock()
        with telemetry.child_span(SPAN_EXTRACT):
            # Validation costs ~0.2 ms a resource: off the event loop, so big Bundles do not
            # stall other requests.
            features = await asyncio.to_thread(self._features, mapping, doc, now)
        result = await predict(self.dataplane, model, features)
        ctx.audit_details = audit_details(result, features, self.pseudonymize)
        ctx.batch_size = 1
        ctx.outcome = "ok"  # before the response starts: the audit reads it then
        await send_json(send, 200, risk_assessment(result, features, now=now), FHIR_JSON)

    def _features(self, mapping: FhirMapping, doc: dict[str, Any], now: datetime) -> FeatureVector:
        resources = parse_resources(doc, max_entries=self.max_entries)
        patients = {r.id for r in resources if r.get_resource_type() == "Patient"}
        if len(patients) != 1:
            raise Unprocessable("the request must hold exactly one Patient")
        patient_id = patients.pop()
        if patient_id is None:  # extract refuses any resource without an id in the same words
            raise BadRequest("a Patient without an id cannot be cited as a basis")
        return extract(
            mapping, resources, patient_id=patient_id, now=now, future_skew=self.future_skew
        )
