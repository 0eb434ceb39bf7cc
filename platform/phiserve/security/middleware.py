"""Authentication and authorization as a plain ASGI layer (no Starlette's base-middleware class).

Placement: inside :class:`phiserve.context.ContextMiddleware` (which matches the route and creates
the request context) and inside the audit layer (so refusals are audited), outside the router::

    ContextMiddleware(AuditMiddleware(AuthMiddleware(router, {"bearer": BearerAuthenticator(v)})))

Each route names its authenticator (``RouteSpec.auth``): OIDC bearer tokens for the V2 API, and
other schemes a front end brings (the CDS Hooks client JWT, say). Behaviour per HTTP request:

- open routes (health, metrics) pass through untouched;
- every other path, including paths the router will answer 404, needs credentials (unmatched
  paths: a bearer token) so unauthenticated probing learns nothing but 401;
- a missing, malformed or invalid token answers 401 with a ``WWW-Authenticate`` challenge naming
  the cause class; a valid token without the route's scope answers 403;
- on success the context gets ``subject``, ``scopes`` and ``break_glass``; on refusal it gets
  ``outcome="denied"`` and ``error_type`` (the refusal's class name), and the subject too when the
  token was valid but lacked the scope.

WebSocket connections are refused (close code 1008): the Open Inference Protocol has none, and an
unauthenticated side door must not exist. Lifespan events pass through.

With ``PHISERVE_AUTH_ENABLED=false`` the composition root does not add this layer at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve import telemetry
from phiserve.context import get_context
from phiserve.errors import PhiserveError, send_error
from phiserve.http.routing import BEARER, Route
from phiserve.security.authorization import authorize
from phiserve.security.errors import MalformedToken, MissingToken
from phiserve.security.principal import Principal
from phiserve.security.tokens import MAX_TOKEN_BYTES, TokenVerifier

_POLICY_VIOLATION: Final = 1008


def bearer_token(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> str:
    """The credential of the single ``Authorization: Bearer`` header; raise 401 otherwise."""
    value: bytes | None = None
    for name, raw in headers:
        if name == b"authorization":
            if value is not None:
                raise MalformedToken("more than one Authorization header")
            value = raw
    if value is None:
        raise MissingToken()
    scheme, _, credential = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise MissingToken("authorization scheme must be Bearer")
    credential = credential.strip()
    if not credential:
        raise MissingToken()
    # base64url and dots only: anything else is not a JWS and is refused before parsing.
    if len(credential) > MAX_TOKEN_BYTES or not credential.isascii() or b" " in credential:
        raise MalformedToken()
    return credential.decode("ascii")


class Authenticator(Protocol):
    """Turns a request's credentials into a :class:`Principal`, or raises a 401 error."""

    async def authenticate(self, scope: Scope, route: Route | None) -> Principal:
        """Verify the credentials ``scope`` carries for ``route`` (``None``: unmatched path)."""
        ...


class BearerAuthenticator:
    """OIDC bearer tokens (``Authorization: Bearer <JWT>``) checked by a :class:`TokenVerifier`."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def authenticate(self, scope: Scope, route: Route | None) -> Principal:
        """Verify the request's single bearer token."""
        return await self.verifier.averify(bearer_token(scope["headers"]))


class AuthMiddleware:
    """Plain ASGI layer that authenticates and authorizes every non-open HTTP request."""

    def __init__(self, app: ASGIApp, authenticators: Mapping[str, Authenticator]) -> None:
        self.app = app
        self.authenticators = dict(authenticators)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Let the request through only with a valid token carrying the route's scope."""
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket":
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
                return
            await self.app(scope, receive, send)
            return
        try:
            ctx = get_context(scope)
        except RuntimeError as exc:  # a composition error: fail closed with an opaque 500
            await send_error(send, exc)
            return
        route = ctx.route
        if route is not None and route.is_open:
            await self.app(scope, receive, send)
            return
        try:
            # The composition root checked that every route's scheme has an authenticator.
            authenticator = self.authenticators[route.auth if route else BEARER]
            with telemetry.child_span(telemetry.SPAN_AUTHENTICATE):
                principal = await authenticator.authenticate(scope, route)
            # Recorded before the scope check so a 403's audit record says who was refused.
            ctx.subject = principal.subject
            ctx.scopes = principal.scopes
            ctx.break_glass = principal.break_glass
            authorize(principal, route)
        except PhiserveError as exc:
            ctx.outcome = "denied"
            ctx.error_type = type(exc).__name__
            await send_error(send, exc)
            return
        await self.app(scope, receive, send)
