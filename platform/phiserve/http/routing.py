"""The route table: the one place paths become route templates, models, versions and kinds.

Every front end (the V2 protocol, /metrics, the clinical interfaces) declares its routes as
:class:`RouteSpec` templates; :class:`~phiserve.context.ContextMiddleware` matches each request
once against the composed :class:`RouteTable`, and :class:`Router` dispatches to the handler
registered under the route's name. A route's ``auth`` names the authenticator that guards it
(``open`` for none); its ``kind`` decides which scopes it needs.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from starlette.types import Receive, Scope, Send

from phiserve.context import get_context, outcome_for_status
from phiserve.errors import MethodNotAllowed, NotFound, PhiserveError, send_error

log = logging.getLogger(__name__)

OPEN: Final = "open"
BEARER: Final = "bearer"
_MAX_VERSION: Final = 2**31


class RouteKind(StrEnum):
    """What a route does; decides which scope it needs (see phiserve.security.authorization)."""

    HEALTH = "health"  # liveness and readiness probes
    METRICS = "metrics"  # Prometheus scrape
    DOCS = "docs"  # the OpenAPI description (no data)
    METADATA = "metadata"  # server and model metadata, model readiness
    INFER = "infer"
    CDS = "cds"  # CDS Hooks discovery, service calls and feedback (phiserve.cds)
    OUTCOME = "outcome"  # ground-truth labels for issued predictions (model monitoring)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route a front end serves: ``template`` segments are literals or ``{parameters}``.

    ``{model}`` and ``{version}`` are understood (a version is a positive integer; anything else
    marks the route ``bad_version``); other parameters reach the handler in ``Route.params``.
    """

    name: str
    method: str
    template: str
    kind: RouteKind
    auth: str = BEARER

    @property
    def segments(self) -> tuple[str, ...]:
        """The template's path segments."""
        return tuple(self.template.strip("/").split("/"))


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
    params: tuple[tuple[str, str], ...] = ()
    auth: str = BEARER

    @property
    def is_open(self) -> bool:
        """Open routes need no credentials."""
        return self.auth == OPEN

    def param(self, name: str) -> str | None:
        """A path parameter other than model and version."""
        for key, value in self.params:
            if key == name:
                return value
        return None


class RouteTable:
    """Matches paths against route templates, indexed by segment count and first segment."""

    def __init__(self, specs: Iterable[RouteSpec]) -> None:
        self.specs = tuple(specs)
        seen: set[tuple[str, str]] = set()
        self._index: dict[tuple[int, str], list[RouteSpec]] = {}
        for spec in self.specs:
            if (spec.method, spec.template) in seen:
                raise ValueError(f"route {spec.method} {spec.template} declared twice")
            seen.add((spec.method, spec.template))
            segments = spec.segments
            if segments[0].startswith("{"):
                raise ValueError(f"route {spec.template}: the first segment must be literal")
            self._index.setdefault((len(segments), segments[0]), []).append(spec)

    def match(self, method: str, path: str) -> Route | None:
        """The route ``path`` names (preferring one for ``method``); ``None`` if none does.

        A path that matches only routes of other methods still matches, so the router can
        answer 405 rather than 404.
        """
        parts = path.strip("/").split("/")
        found: Route | None = None
        for spec in self._index.get((len(parts), parts[0]), ()):
            route = _bind(spec, parts)
            if route is not None:
                if spec.method == method:
                    return route
                found = found or route
        return found


def _bind(spec: RouteSpec, parts: list[str]) -> Route | None:
    model: str | None = None
    version: int | None = None
    bad_version = False
    params: list[tuple[str, str]] = []
    for want, got in zip(spec.segments, parts, strict=True):
        if not want.startswith("{"):
            if want != got:
                return None
        elif not got:
            return None
        elif want == "{model}":
            model = got
        elif want == "{version}":
            # isdigit() alone admits digits of other scripts (such as "¹"), which int() refuses.
            if got.isascii() and got.isdigit() and 0 < int(got) < _MAX_VERSION:
                version = int(got)
            else:
                bad_version = True
        else:
            params.append((want[1:-1], got))
    return Route(
        spec.name,
        spec.method,
        spec.template,
        spec.kind,
        model,
        version,
        bad_version,
        tuple(params),
        spec.auth,
    )


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class Router:
    """Innermost ASGI app: dispatches a matched route to its handler; one error path for all.

    Handlers set ``ctx.outcome`` before their response starts (the audit layer reads it then);
    a :class:`~phiserve.errors.PhiserveError` becomes its status, anything else an opaque 500.
    A bug is logged as its type and stack frames, never its message (which may quote request
    data), and is not re-raised: the connection stays usable for the client's next request.
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one HTTP request."""
        ctx = get_context(scope)
        try:
            route = ctx.route
            if route is None:
                raise NotFound("no such route")
            if scope["method"] != route.method:
                raise MethodNotAllowed(f"{route.template} accepts {route.method} only")
            await self.handlers[route.name](scope, receive, send)
        except PhiserveError as exc:
            ctx.outcome, ctx.error_type = outcome_for_status(exc.status), type(exc).__name__
            await send_error(send, exc)
        except Exception as exc:  # a real bug: opaque 500, details only in the server log
            ctx.outcome, ctx.error_type = "error", type(exc).__name__
            log.error(
                "internal error %s on %s\n%s",
                type(exc).__name__,
                ctx.route_template,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            await send_error(send, exc)
