"""Per-request context shared by the middleware layers and the route handlers.

The outermost layer (:class:`ContextMiddleware`) matches the route once and creates a
:class:`RequestContext`; authentication fills in the subject, handlers the outcome, telemetry the
trace id, and the audit layer writes it all down. The context holds only PHI-free facts: names,
ids, numbers and route templates, never bodies, headers, query values or tensor values.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY: Final = "phiserve.context"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RouteKind(StrEnum):
    """What a route does; decides which scope it needs."""

    HEALTH = "health"  # open: liveness and readiness probes
    METRICS = "metrics"  # open: Prometheus scrape
    DOCS = "docs"  # open: the OpenAPI description (no data)
    METADATA = "metadata"  # server and model metadata, model readiness
    INFER = "infer"


@dataclass(frozen=True, slots=True)
class Route:
    """A matched route: its template (a bounded label value) and its parameters."""

    name: str
    method: str
    template: str
    kind: RouteKind
    model: str | None = None
    version: int | None = None
    # Set when the path names a version that is not a positive integer.
    bad_version: bool = False

    @property
    def is_open(self) -> bool:
        """Open routes need no token."""
        return self.kind in (RouteKind.HEALTH, RouteKind.METRICS, RouteKind.DOCS)


def match_route(method: str, path: str) -> Route | None:
    """Match an Open Inference Protocol path; ``None`` for anything we do not serve."""
    parts = path.strip("/").split("/")
    n = len(parts)
    if parts[0] == "metrics" and n == 1:
        return Route("metrics", "GET", "/metrics", RouteKind.METRICS)
    if parts[0] != "v2":
        return None
    if n == 1:
        return Route("server_metadata", "GET", "/v2", RouteKind.METADATA)
    if parts[1] == "openapi.json" and n == 2:
        return Route("openapi", "GET", "/v2/openapi.json", RouteKind.DOCS)
    if parts[1] == "health" and n == 3 and parts[2] in ("live", "ready"):
        return Route(f"health_{parts[2]}", "GET", f"/v2/health/{parts[2]}", RouteKind.HEALTH)
    if parts[1] != "models" or n < 3 or not parts[2]:
        return None
    model, rest = parts[2], parts[3:]
    version: int | None = None
    bad_version = False
    base = "/v2/models/{model}"
    if rest[:1] == ["versions"]:
        if len(rest) < 2:
            return None
        raw = rest[1]
        # isdigit() alone admits digits of other scripts (such as "¹"), which int() refuses.
        if raw.isascii() and raw.isdigit() and 0 < int(raw) < 2**31:
            version = int(raw)
        else:
            bad_version = True
        rest = rest[2:]
        base += "/versions/{version}"
    if not rest:
        return Route("model_metadata", "GET", base, RouteKind.METADATA, model, version, bad_version)
    if rest == ["ready"]:
        return Route(
            "model_ready", "GET", base + "/ready", RouteKind.METADATA, model, version, bad_version
        )
    if rest == ["infer"]:
        return Route("infer", "POST", base + "/infer", RouteKind.INFER, model, version, bad_version)
    return None


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
        self, app: ASGIApp, known_models: Callable[[], Collection[str]] = frozenset
    ) -> None:
        self.app = app
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
            route=match_route(scope["method"], scope["path"]),
            client=client[0] if client else None,
        )
        if ctx.route is not None and ctx.route.model in self.known_models():
            ctx.model, ctx.version = ctx.route.model, ctx.route.version
        scope[SCOPE_KEY] = ctx
        header = (b"x-request-id", ctx.request_id.encode())

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
