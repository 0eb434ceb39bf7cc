"""The outcome route needs outcome:write (or break-glass); no inference scope opens it."""

from __future__ import annotations

import pytest

from phiserve.http.routing import RouteTable
from phiserve.monitoring import OUTCOME_ROUTE
from phiserve.security.authorization import BREAK_GLASS_SCOPE, authorize, is_allowed
from phiserve.security.errors import InsufficientScope
from phiserve.security.principal import Principal

ROUTE = RouteTable([OUTCOME_ROUTE]).match("POST", "/v2/models/breast-cancer/versions/1/outcomes")


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (("outcome:write",), True),
        ((BREAK_GLASS_SCOPE,), True),
        (("infer:*", "metadata:read"), False),
        (("infer:breast-cancer",), False),
        (("outcome:read",), False),
        (("OUTCOME:write",), False),
        ((), False),
    ],
)
def test_outcome_scope(scopes: tuple[str, ...], allowed: bool) -> None:
    principal = Principal("lab", frozenset(scopes), BREAK_GLASS_SCOPE in scopes)
    assert ROUTE is not None and ROUTE.model == "breast-cancer" and ROUTE.version == 1
    assert is_allowed(principal, ROUTE) is allowed
    if not allowed:
        with pytest.raises(InsufficientScope, match="outcome:write"):
            authorize(principal, ROUTE)
