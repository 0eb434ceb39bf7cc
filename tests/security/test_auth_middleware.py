"""AuthMiddleware as a unit: ContextMiddleware(AuthMiddleware(tiny app)) driven through httpx."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from phiserve.context import ContextMiddleware, RequestContext, get_context
from phiserve.security.authorization import BREAK_GLASS_SCOPE
from phiserve.security.middleware import AuthMiddleware, BearerAuthenticator, bearer_token
from phiserve.security.tokens import TokenVerifier
from tests.routes import TABLE
from tests.security.helpers import CANARY

INFER = "/v2/models/breast-cancer/infer"


class Recorder:
    """The tiny inner app: answers 200 and remembers the contexts it saw."""

    def __init__(self) -> None:
        self.seen: list[RequestContext] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.seen.append("lifespan")  # type: ignore[arg-type]
            return
        self.seen.append(get_context(scope))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Harness:
    """The app under test plus the contexts of the requests it handled (allowed or refused)."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.inner = Recorder()
        self.contexts: list[RequestContext] = []
        auth = AuthMiddleware(self.inner, {"bearer": BearerAuthenticator(verifier)})

        async def capture(scope: dict, receive: Any, send: Any) -> None:
            # Sits where the audit layer will: between ContextMiddleware and AuthMiddleware.
            if scope["type"] == "http":
                self.contexts.append(get_context(scope))
            await auth(scope, receive, send)

        self.app = ContextMiddleware(capture, TABLE)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://phiserve") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(go())

    @property
    def last(self) -> RequestContext:
        return self.contexts[-1]


@pytest.fixture
def harness(verifier: TokenVerifier) -> Harness:
    return Harness(verifier)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_denied(h: Harness, response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert h.last.outcome == "denied"
    assert h.last.error_type == error_type
    assert h.last.status == status
    assert h.inner.seen == []  # the request never reached the app


# --- open routes -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/metrics"])
def test_open_routes_need_no_token(harness: Harness, path: str) -> None:
    response = harness.request("GET", path)
    assert response.status_code == 200
    assert harness.last.subject is None


def test_open_route_ignores_a_bad_token(harness: Harness) -> None:
    assert harness.request("GET", "/v2/health/live", headers=bearer("junk")).status_code == 200


# --- 401 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", INFER), ("GET", "/v2"), ("GET", "/v2/models/breast-cancer"), ("GET", "/nope")],
)
def test_missing_header_is_401_with_challenge(harness: Harness, method: str, path: str) -> None:
    response = harness.request(method, path)
    assert_denied(harness, response, 401, "MissingToken")
    assert response.headers["www-authenticate"] == 'Bearer realm="phiserve"'
    assert response.json() == {"error": "bearer token required"}
    assert response.headers["x-request-id"] == harness.last.request_id


@pytest.mark.parametrize(
    ("value", "error_type", "message"),
    [
        ("Basic YWxpY2U6c2VjcmV0", "MissingToken", "authorization scheme must be Bearer"),
        ("Bearer", "MissingToken", "bearer token required"),
        ("Bearer    ", "MissingToken", "bearer token required"),
        ("Bearer a b", "MalformedToken", "malformed token"),
        ("Bearer not-a-jwt", "MalformedToken", "malformed token"),
        ("Bearer " + "a" * 9000, "MalformedToken", "malformed token"),
    ],
)
def test_malformed_authorization_is_401(
    harness: Harness, value: str, error_type: str, message: str
) -> None:
    response = harness.request("POST", INFER, headers={"Authorization": value})
    assert_denied(harness, response, 401, error_type)
    assert response.json() == {"error": message}


def test_scheme_is_case_insensitive(harness: Harness, make_token) -> None:
    response = harness.request("POST", INFER, headers={"Authorization": f"bearer {make_token()}"})
    assert response.status_code == 200


def test_two_authorization_headers_are_refused(harness: Harness, make_token) -> None:
    headers = [("Authorization", f"Bearer {make_token()}"), ("Authorization", "Bearer x.y.z")]
    response = harness.request("POST", INFER, headers=headers)
    assert_denied(harness, response, 401, "MalformedToken")


@pytest.mark.parametrize(
    ("claims", "error_type", "message"),
    [
        ({"exp": int(time.time()) - 120}, "TokenExpired", "token expired"),
        ({"iss": "https://evil.test"}, "WrongIssuer", "wrong issuer"),
        ({"aud": "other"}, "WrongAudience", "wrong audience"),
        ({"kid": "unknown"}, "UnknownKeyId", "unknown key id"),
        ({"exp": None}, "MissingClaim", "missing required claim: exp"),
        ({"nbf": int(time.time()) + 3600}, "TokenNotYetValid", "token not yet valid"),
    ],
)
def test_invalid_tokens_are_401_naming_the_cause(
    harness: Harness, make_token, claims: dict, error_type: str, message: str
) -> None:
    response = harness.request("POST", INFER, headers=bearer(make_token(**claims)))
    assert_denied(harness, response, 401, error_type)
    assert response.json() == {"error": message}
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="phiserve", error="invalid_token"')
    assert f'error_description="{message}"' in challenge
    assert harness.last.subject is None


def test_bad_signature_is_401(harness: Harness, make_token, ec_key, other_ec_key, kid_of) -> None:
    token = make_token(key=other_ec_key, kid=kid_of(ec_key))
    response = harness.request("POST", INFER, headers=bearer(token))
    assert_denied(harness, response, 401, "BadSignature")
    assert response.json() == {"error": "bad signature"}


def test_alg_none_is_401(harness: Harness, make_token) -> None:
    _, body, _ = make_token().split(".")
    none_head = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    response = harness.request("POST", INFER, headers=bearer(f"{none_head}.{body}."))
    assert_denied(harness, response, 401, "AlgorithmNotAllowed")
    assert response.json() == {"error": "algorithm not allowed"}


# --- 403 and success ---------------------------------------------------------------------------
def test_missing_scope_is_403_and_records_who(harness: Harness, make_token) -> None:
    token = make_token(sub="bob", scope="infer:chest-xray")
    response = harness.request("POST", INFER, headers=bearer(token))
    assert_denied(harness, response, 403, "InsufficientScope")
    assert response.json() == {"error": "scope infer:breast-cancer required"}
    assert harness.last.subject == "bob"
    assert harness.last.scopes == {"infer:chest-xray"}


def test_valid_token_reaches_the_app_with_identity(harness: Harness, make_token) -> None:
    response = harness.request("POST", INFER, headers=bearer(make_token()), content=b"{}")
    assert response.status_code == 200
    (ctx,) = harness.inner.seen
    assert ctx.subject == "alice"
    assert ctx.scopes == {"infer:breast-cancer", "metadata:read"}
    assert ctx.break_glass is False
    assert ctx.outcome == "pending"  # the handler decides the outcome, not this layer
    assert ctx.error_type is None


def test_wildcard_scope_opens_any_model(harness: Harness, make_token) -> None:
    token = make_token(scope="infer:*")
    for model in ("breast-cancer", "chest-xray"):
        response = harness.request("POST", f"/v2/models/{model}/infer", headers=bearer(token))
        assert response.status_code == 200


def test_break_glass_is_allowed_and_flagged(harness: Harness, make_token) -> None:
    token = make_token(sub="dr-oncall", scope=BREAK_GLASS_SCOPE)
    response = harness.request("POST", "/v2/models/chest-xray/infer", headers=bearer(token))
    assert response.status_code == 200
    assert harness.last.break_glass is True
    assert harness.last.subject == "dr-oncall"


def test_unknown_route_with_token_reaches_the_router(harness: Harness, make_token) -> None:
    token = make_token(scope="")
    assert harness.request("GET", "/nope", headers=bearer(token)).status_code == 200
    assert harness.last.subject == "alice"


def test_metadata_routes(harness: Harness, make_token) -> None:
    meta_only = bearer(make_token(scope="metadata:read"))
    assert harness.request("GET", "/v2", headers=meta_only).status_code == 200
    assert harness.request("GET", "/v2/models/x/ready", headers=meta_only).status_code == 200
    assert harness.request("POST", "/v2/models/x/infer", headers=meta_only).status_code == 403


# --- other ASGI scope types --------------------------------------------------------------------
def test_lifespan_passes_through(verifier: TokenVerifier) -> None:
    inner = Recorder()
    asyncio.run(
        AuthMiddleware(inner, {"bearer": BearerAuthenticator(verifier)})(
            {"type": "lifespan"}, None, None
        )
    )
    assert inner.seen == ["lifespan"]


def test_websocket_is_closed_with_policy_violation(verifier: TokenVerifier) -> None:
    inner = Recorder()
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v2", "headers": []}
    asyncio.run(
        AuthMiddleware(inner, {"bearer": BearerAuthenticator(verifier)})(scope, receive, send)
    )
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert inner.seen == []


def test_without_context_middleware_fails_closed(verifier: TokenVerifier, make_token) -> None:
    inner = Recorder()
    app = AuthMiddleware(inner, {"bearer": BearerAuthenticator(verifier)})

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://x"
        ) as c:
            return await c.post(INFER, headers=bearer(make_token()))

    response = asyncio.run(go())
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert inner.seen == []


# --- the PHI canary ----------------------------------------------------------------------------
def test_canaries_never_appear_in_error_responses(
    harness: Harness, make_token, other_ec_key
) -> None:
    now = int(time.time())
    tokens = [
        make_token(sub=CANARY, iss=CANARY),
        make_token(sub=CANARY, aud=CANARY),
        make_token(sub=CANARY, exp=now - 999),
        make_token(sub=CANARY, key=other_ec_key, kid=CANARY),
        make_token(kid=None, headers={"kid": CANARY}),
        make_token(sub=CANARY, scope=f"infer:{CANARY}"),  # valid, but lacks the scope: 403
        CANARY,
        f"{CANARY}.{CANARY}.{CANARY}",
    ]
    values = [f"Bearer {t}" for t in tokens] + [CANARY, f"Basic {CANARY}", f"{CANARY} {CANARY}"]
    for value in values:
        response = harness.request(
            "POST",
            f"{INFER}?q={CANARY}",
            headers={"Authorization": value, "X-Patient": CANARY, "X-Request-Id": CANARY + "!"},
            content=json.dumps({"inputs": [{"name": CANARY, "data": [CANARY]}]}),
        )
        assert response.status_code in (401, 403)
        shown = response.text + json.dumps(dict(response.headers))
        assert CANARY not in shown
        ctx = harness.last
        assert CANARY not in repr((ctx.error_type, ctx.request_id, ctx.route_template))


def test_bearer_token_parser() -> None:
    assert bearer_token([(b"authorization", b"Bearer  a.b.c ")]) == "a.b.c"
    assert bearer_token([(b"x", b"y"), (b"authorization", b"BEARER a.b.c")]) == "a.b.c"
