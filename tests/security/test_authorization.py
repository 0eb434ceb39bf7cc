"""Scope rules per route kind, wildcard and break-glass."""

from __future__ import annotations

import pytest

from phiserve.security.authorization import BREAK_GLASS_SCOPE, authorize, is_allowed
from phiserve.security.errors import InsufficientScope
from phiserve.security.principal import Principal
from tests.routes import match_route

INFER = ("POST", "/v2/models/breast-cancer/infer")
INFER_V = ("POST", "/v2/models/breast-cancer/versions/2/infer")
MODEL_META = ("GET", "/v2/models/breast-cancer")
MODEL_READY = ("GET", "/v2/models/breast-cancer/versions/1/ready")
SERVER_META = ("GET", "/v2")
OTHER_INFER = ("POST", "/v2/models/chest-xray/infer")


def who(*scopes: str) -> Principal:
    return Principal("alice", frozenset(scopes), BREAK_GLASS_SCOPE in scopes)


@pytest.mark.parametrize(
    ("scopes", "request_", "allowed"),
    [
        (("infer:breast-cancer",), INFER, True),
        (("infer:breast-cancer",), INFER_V, True),
        (("infer:breast-cancer",), OTHER_INFER, False),
        (("infer:*",), OTHER_INFER, True),
        (("metadata:read",), INFER, False),
        ((), INFER, False),
        (("infer:breast",), INFER, False),  # no prefix matching
        (("infer:breast-cancer*",), INFER, False),
        (("INFER:breast-cancer",), INFER, False),  # scopes are case-sensitive
        (("metadata:read",), MODEL_META, True),
        (("metadata:read",), MODEL_READY, True),
        (("infer:breast-cancer",), MODEL_META, True),
        (("infer:breast-cancer",), MODEL_READY, True),
        (("infer:chest-xray",), MODEL_META, False),
        (("infer:*",), MODEL_META, True),
        (("metadata:read",), SERVER_META, True),
        (("infer:chest-xray",), SERVER_META, True),
        (("infer:*",), SERVER_META, True),
        (("profile", "email"), SERVER_META, False),
        ((), SERVER_META, False),
        ((BREAK_GLASS_SCOPE,), INFER, True),
        ((BREAK_GLASS_SCOPE,), OTHER_INFER, True),
        ((BREAK_GLASS_SCOPE,), MODEL_META, True),
        ((BREAK_GLASS_SCOPE,), SERVER_META, True),
        (("emergency:access:extra",), INFER, False),
    ],
)
def test_scope_rules(scopes: tuple[str, ...], request_: tuple[str, str], allowed: bool) -> None:
    route = match_route(*request_)
    assert route is not None
    assert is_allowed(who(*scopes), route) is allowed


def test_open_and_unmatched_routes_need_no_scope() -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert is_allowed(who(), match_route("GET", path))
    assert is_allowed(who(), None)  # unmatched: the router answers 404 to an authenticated caller


def test_missing_infer_scope_names_it() -> None:
    with pytest.raises(InsufficientScope) as info:
        authorize(who("metadata:read"), match_route(*INFER))
    assert info.value.status == 403
    assert info.value.message == "scope infer:breast-cancer required"
    assert 'error="insufficient_scope"' in info.value.headers["WWW-Authenticate"]
    assert 'scope="infer:breast-cancer"' in info.value.headers["WWW-Authenticate"]


def test_missing_metadata_scope_names_both_options() -> None:
    with pytest.raises(InsufficientScope, match="metadata:read or infer:breast-cancer"):
        authorize(who(), match_route(*MODEL_META))
    with pytest.raises(InsufficientScope, match="scope metadata:read required"):
        authorize(who(), match_route(*SERVER_META))


@pytest.mark.parametrize("model", ['a"b', "x" * 100, "a\r\nSet-Cookie: x=1", "é"])
def test_odd_model_names_are_not_echoed(model: str) -> None:
    route = match_route("POST", f"/v2/models/{model}/infer")
    with pytest.raises(InsufficientScope) as info:
        authorize(who(), route)
    assert model not in info.value.message
    assert model not in info.value.headers["WWW-Authenticate"]
    assert info.value.message == "scope infer:<model> required"


def test_authorize_passes_silently_when_allowed() -> None:
    assert authorize(who("infer:*"), match_route(*INFER)) is None
