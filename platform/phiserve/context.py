"""Per-request context shared by the middleware layers and the route handlers.

The outermost layer (:class:`ContextMiddleware`) matches the route once against the route table
(:mod:`phiserve.http.routing`) and creates a :class:`RequestContext`; authentication fills in the subject, handlers the outcome, telemetry the
trace id, and the audit layer writes it all down. The context holds only PHI-free facts: names,
ids, numbers and route templates, never bodies, headers, query values or tensor values.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from phiserve.http.routing import Route, RouteTable

SCOPE_KEY: Final = "phiserve.context"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class RequestContext:
    """PHI-free facts about one request, filled in as it passes through the layers."""

    request_id: str
    method: str
    route: Route | None
    client: str | None
    started: float = field(default_factory=time.perf_counter)
    wall_time: float = field(default_factory=time.time)
    trace_id: str | None = None
    subject: str | None = None
    scopes: frozenset[str] = frozenset()
    break_glass: bool = False
    # Filled in by the handler: the version actually served (after the version policy).
    model: str | None = None
    version: int | None = None
    status: int = 0
    outcome: str = "pending"  # ok | denied | rejected | error | overloaded
    error_type: str | None = None
    body_hmac: str | None = None
    batch_size: int | None = None
    # PHI-free facts a front end adds to the audit record (pseudonyms, decisions, feature names);
    # sanitised by phiserve.audit.record.
    audit_details: dict[str, Any] | None = None

    @property
    def route_template(self) -> str:
        """Route template for labels and audit; ``unmatched`` for unknown paths."""
        return self.route.template if self.route else "unmatched"


def outcome_for_status(status: int) -> str:
    """The outcome implied by an HTTP status, for layers that did not set one."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status in (429, 503):
        return "overloaded"
    if status < 500:
        return "rejected"
    return "error"


def get_context(scope: Scope) -> RequestContext:
    """The context of the request in ``scope`` (created by :class:`ContextMiddleware`).

    Raises ``RuntimeError`` when there is none: a composition error (a layer placed outside
    :class:`ContextMiddleware`), never a client's.
    """
    ctx: RequestContext | None = scope.get(SCOPE_KEY)
    if ctx is None:
        raise RuntimeError("no request context: this layer must run inside ContextMiddleware")
    return ctx


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            # Only a well-formed id is echoed: arbitrary header text could carry PHI.
            if _REQUEST_ID_OK.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class ContextMiddleware:
    """Outermost layer: creates the request context and echoes its request id.

    ``known_models`` names the models the server has: only those become ``ctx.model``, so a
    path segment a client made up (a name, a record number) never reaches labels, spans or the
    audit trail. The router still sees the raw path through ``ctx.route``.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: RouteTable,
        known_models: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.app = app
        self.routes = routes
        self.known_models = known_models

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Attach a :class:`RequestContext` to HTTP requests and add ``x-request-id``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ctx = RequestContext(
            request_id=_request_id(scope),
            method=scope["method"],
            route=self.routes.match(scope["method"], scope["path"]),
            client=client[0] if client else None,
        )
        if ctx.route is not None and ctx.route.model in self.known_models():
            ctx.model, ctx.version = ctx.route.model, ctx.route.version
        scope[SCOPE_KEY] = ctx
        header = (b"x-request-id", ctx.request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
