"""Outcome feedback over HTTP: a ground-truth label for a prediction, joined by its id.

    POST /v2/models/{model}/versions/{version}/outcomes
    {"prediction_id": "<id from the inference response>", "label": 0 | 1 | true | false}

201 when recorded; 400 for a malformed body; 404 for a version that is not monitored or an id
it never issued or has forgotten (expired, or pushed out by newer predictions); 409 for a second
label for one id (the first stands). Needs the ``outcome:write`` scope. The audit record holds a
keyed pseudonym of the prediction id and the result, never the label: a diagnosis is PHI.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from starlette.types import Receive, Scope, Send

from phiserve.context import get_context
from phiserve.dataplane import DataPlane
from phiserve.errors import BadRequest, Conflict, NotFound
from phiserve.http.io import parse_json_object, read_body, send_json
from phiserve.http.routing import Handler, RouteKind, RouteSpec
from phiserve.monitoring.monitor import Monitor
from phiserve.monitoring.window import OutcomeResult

ROUTE: Final = RouteSpec(
    "outcome", "POST", "/v2/models/{model}/versions/{version}/outcomes", RouteKind.OUTCOME
)
_MAX_BODY: Final = 4096
# What the hook issues: 24 hex digits, and ".<row>" for a row of a batch.
_PREDICTION_ID: Final = re.compile(r"^[0-9a-f]{24}(\.[0-9]{1,6})?$")


class OutcomeHandlers:
    """The outcome route's handler."""

    def __init__(
        self, dataplane: DataPlane, monitor: Monitor, pseudonymize: Callable[[str, str], str]
    ) -> None:
        self.dataplane = dataplane
        self.monitor = monitor
        self.pseudonymize = pseudonymize

    def handlers(self) -> dict[str, Handler]:
        """Route name -> handler."""
        return {ROUTE.name: self.outcome}

    async def outcome(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record one label."""
        ctx = get_context(scope)
        model = self.dataplane.resolve_for(ctx)
        doc = parse_json_object(await read_body(scope, receive, _MAX_BODY), "outcome")
        prediction_id, label = doc.get("prediction_id"), doc.get("label")
        if set(doc) != {"prediction_id", "label"}:
            raise BadRequest('an outcome is {"prediction_id": "...", "label": 0 or 1}')
        if not isinstance(prediction_id, str) or not _PREDICTION_ID.match(prediction_id):
            raise BadRequest("prediction_id is not one this server issues")
        if label not in (0, 1) or isinstance(label, float):
            raise BadRequest("label must be 0, 1, false or true")
        result = await self.monitor.record_outcome(
            model.name, model.version, prediction_id, int(label)
        )
        ctx.audit_details = {
            "prediction": self.pseudonymize("prediction", prediction_id),
            "outcome": result.value,
        }
        if result is OutcomeResult.UNKNOWN:
            raise NotFound(f"model {model.name!r} version {model.version}: unknown or expired id")
        if result is OutcomeResult.DUPLICATE:
            raise Conflict("this prediction already has an outcome")
        ctx.outcome = "ok"
        await send_json(send, 201, {"prediction_id": prediction_id, "outcome": "recorded"})
