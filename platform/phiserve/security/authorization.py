"""Scope rules: which scopes open which routes.

``infer:<model>`` or ``infer:*`` runs inference on a model; ``metadata:read`` or any infer scope
that covers the model reads its metadata and readiness; server metadata (``GET /v2``) needs
``metadata:read`` or any infer scope. ``outcome:write`` posts ground-truth labels for issued
predictions (model monitoring): a separate grant, so a client that infers cannot grade itself.
CDS Hooks routes need ``cds:<model>`` or ``cds:*`` (the CDS client authenticator grants them from
the client's configuration); discovery needs any CDS scope. The break-glass scope (emergency
access, HIPAA
164.312(a)(2)(ii)) opens everything, and every request made with it is flagged in the audit trail.
"""

from __future__ import annotations

import re
from typing import Final

from phiserve.http.routing import Route, RouteKind
from phiserve.security.errors import InsufficientScope
from phiserve.security.principal import Principal

BREAK_GLASS_SCOPE: Final = "emergency:access"
METADATA_SCOPE: Final = "metadata:read"
INFER_PREFIX: Final = "infer:"
INFER_ANY: Final = "infer:*"
CDS_PREFIX: Final = "cds:"
CDS_ANY: Final = "cds:*"
OUTCOME_SCOPE: Final = "outcome:write"
# Model names echoed in a 403 (body and challenge header) only when they look like model names:
# the path is client input and must not carry arbitrary text (or CR/LF) into a header.
_SAFE_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def infer_scope(model: str) -> str:
    """The scope that grants inference on ``model``."""
    return f"{INFER_PREFIX}{model}"


def cds_scope(service: str) -> str:
    """The scope that lets a CDS client call the CDS service ``service`` (a model name)."""
    return f"{CDS_PREFIX}{service}"


def is_allowed(principal: Principal, route: Route | None) -> bool:
    """Whether ``principal`` may call ``route`` (``None``: an unmatched path, authentication only)."""
    scopes = principal.scopes
    if route is None or route.is_open or BREAK_GLASS_SCOPE in scopes:
        return True
    if route.kind is RouteKind.INFER:
        return INFER_ANY in scopes or (
            route.model is not None and infer_scope(route.model) in scopes
        )
    if route.kind is RouteKind.OUTCOME:
        return OUTCOME_SCOPE in scopes
    if route.kind is RouteKind.METADATA:
        if METADATA_SCOPE in scopes or INFER_ANY in scopes:
            return True
        if route.model is None:  # server metadata: any infer scope shows the caller is a client
            return any(s.startswith(INFER_PREFIX) for s in scopes)
        return infer_scope(route.model) in scopes
    if route.kind is RouteKind.CDS:
        if CDS_ANY in scopes:
            return True
        if route.model is None:  # discovery: lists only the services the client may call
            return any(s.startswith(CDS_PREFIX) for s in scopes)
        return cds_scope(route.model) in scopes
    return False  # a route kind this module does not know: refuse (fail closed)


def authorize(principal: Principal, route: Route | None) -> None:
    """Raise :class:`InsufficientScope` (403) unless ``principal`` may call ``route``."""
    if is_allowed(principal, route):
        return
    assert route is not None  # unmatched routes are always allowed above
    if route.kind is RouteKind.CDS:
        service = route.model or ""
        needed = cds_scope(service) if _SAFE_MODEL.match(service) else "cds:<service>"
        raise InsufficientScope(f"this CDS client may not call {needed}")
    if route.kind is RouteKind.INFER:
        model = route.model or ""
        if _SAFE_MODEL.match(model):
            needed = infer_scope(model)
            raise InsufficientScope(f"scope {needed} required", scope=needed)
        raise InsufficientScope("scope infer:<model> required")
    if route.kind is RouteKind.OUTCOME:
        raise InsufficientScope(f"scope {OUTCOME_SCOPE} required", scope=OUTCOME_SCOPE)
    if route.model is not None and _SAFE_MODEL.match(route.model):
        needed = infer_scope(route.model)
        raise InsufficientScope(
            f"scope {METADATA_SCOPE} or {needed} required", scope=f"{METADATA_SCOPE} {needed}"
        )
    raise InsufficientScope(f"scope {METADATA_SCOPE} required", scope=METADATA_SCOPE)
