"""The CDS client JWT authenticator: every acceptance and refusal cause, jku, replay."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from phiserve.config import CdsClient, Settings
from phiserve.context import SCOPE_KEY, RequestContext
from phiserve.errors import ConfigurationError, Overloaded
from phiserve.http.routing import Route, RouteKind
from phiserve.security import errors as sec
from phiserve.security.cds_client import (
    CdsClientAuthenticator,
    ReplayGuard,
    trusted_client,
)
from tests.cds.clients import Ehr, SigningKey
from tests.cds.fhir_server import FhirServer
from tests.security.helpers import FakeClock, b64url

BASE = "https://cds.example.org"
PATH = "/cds-services/deterioration"
AUD = BASE + PATH
ROUTE = Route("cds_call", "POST", "/cds-services/{model}", RouteKind.CDS, "deterioration")


def request_scope(token: str | None, path: str = PATH) -> dict[str, Any]:
    """An ASGI scope carrying ``token`` with a request context, as the middleware sees it."""
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    ctx = RequestContext(request_id="r1", method="POST", route=ROUTE, client="127.0.0.1")
    return {"type": "http", "path": path, "headers": headers, SCOPE_KEY: ctx}


def authenticator(
    tmp_path: Path, *clients: Ehr, algorithms: tuple[str, ...] = ("ES384", "RS384", "ES256"),
    **entry: Any,
) -> CdsClientAuthenticator:  # fmt: skip
    trusted = [
        trusted_client(CdsClient(**c.client_entry(c.write_jwks(tmp_path / f"{i}.json"), **entry)))
        for i, c in enumerate(clients)
    ]
    return CdsClientAuthenticator(
        trusted, base_url=BASE, algorithms=algorithms, max_lifetime_s=300,
        replay=ReplayGuard(1000),
    )  # fmt: skip


def run(auth: CdsClientAuthenticator, scope: dict[str, Any]) -> Any:
    return asyncio.run(auth.authenticate(scope, ROUTE))


def test_spec_example_key_is_accepted(tmp_path: Path, spec_client: Ehr) -> None:
    auth = authenticator(tmp_path, spec_client)
    token = spec_client.token(AUD)
    scope = request_scope(token)
    principal = run(auth, scope)
    assert principal.subject == spec_client.iss
    assert principal.scopes == frozenset({"cds:*"})
    details = scope[SCOPE_KEY].audit_details
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert details == {
        "cds_client": spec_client.iss,
        "cds_jti_sha256": hashlib.sha256(jti.encode()).hexdigest()[:32],
    }


@pytest.mark.parametrize("alg", ["RS384", "ES256", "ES384"])
def test_generated_keys_of_each_allowed_algorithm(tmp_path: Path, alg: str) -> None:
    ehr = Ehr("https://ehr.test/", [SigningKey.generate(alg)])
    assert run(authenticator(tmp_path, ehr), request_scope(ehr.token(AUD))).subject == ehr.iss


def test_aud_may_be_a_list_naming_the_url(tmp_path: Path, rsa_client: Ehr) -> None:
    token = rsa_client.token([AUD, "https://other.example/x"])
    assert run(authenticator(tmp_path, rsa_client), request_scope(token)).subject == rsa_client.iss


def test_services_limit_the_scopes(tmp_path: Path, rsa_client: Ehr) -> None:
    auth = authenticator(tmp_path, rsa_client, services=["deterioration"])
    principal = run(auth, request_scope(rsa_client.token(AUD)))
    assert principal.scopes == frozenset({"cds:deterioration"})


# --- refusals ------------------------------------------------------------------------------------
def _unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    return jwt.encode(claims, None, algorithm=alg, headers={"kid": "example-kid"})


def _hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS384 JWT built by hand (PyJWT refuses to key HMAC with a PEM, rightly)."""
    header = b64url(json.dumps({"alg": "HS384", "typ": "JWT", "kid": "example-kid"}).encode())
    payload = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha384).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def test_none_and_hmac_are_refused(tmp_path: Path, spec_client: Ehr) -> None:
    auth = authenticator(tmp_path, spec_client)
    claims = jwt.decode(spec_client.token(AUD), options={"verify_signature": False})
    with pytest.raises(sec.AlgorithmNotAllowed):
        run(auth, request_scope(_unsigned(claims)))
    # The classic confusion: HMAC keyed with the client's public key.
    public_pem = (
        spec_client.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs = _hmac_token(claims, public_pem)
    with pytest.raises(sec.AlgorithmNotAllowed):
        run(auth, request_scope(hs))
    with pytest.raises(ConfigurationError):
        CdsClientAuthenticator(
            [], base_url=BASE, algorithms=["HS256"], max_lifetime_s=1, replay=ReplayGuard(1)
        )


def test_hmac_is_refused_in_settings() -> None:
    with pytest.raises(ValueError, match="unsupported CDS client JWT algorithms"):
        Settings(cds_jwt_algorithms=["ES384", "HS384"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"claims": {"iss": "https://stranger.test/"}}, sec.WrongIssuer),
        ({"claims": {"aud": BASE + "/cds-services"}}, sec.WrongAudience),
        ({"claims": {"aud": "http://cds.example.org" + PATH}}, sec.WrongAudience),
        ({"drop": ("jti",)}, sec.MissingClaim),
        ({"drop": ("iat",)}, sec.MissingClaim),
        ({"drop": ("exp",)}, sec.MissingClaim),
        ({"drop": ("iss",)}, sec.MissingClaim),
        ({"claims": {"exp": int(time.time()) - 120}}, sec.TokenExpired),
        ({"claims": {"iat": int(time.time()) + 600}}, sec.TokenNotYetValid),
        ({"lifetime_s": 3600}, sec.TokenLifetimeTooLong),
        ({"claims": {"jti": ""}}, sec.MalformedToken),
        ({"claims": {"jti": 17}}, sec.MalformedToken),
        ({"headers": {"typ": "at+jwt"}}, sec.MalformedToken),
        ({"headers": {"kid": "no-such-kid"}}, sec.UnknownKeyId),
        ({"headers": {"kid": None}}, sec.MalformedToken),
    ],
)
def test_refusals(tmp_path: Path, spec_client: Ehr, change: dict[str, Any], error: type) -> None:
    auth = authenticator(tmp_path, spec_client)
    with pytest.raises(error) as caught:
        run(auth, request_scope(spec_client.token(AUD, **change)))
    assert caught.value.status == 401


def test_key_type_must_fit_the_algorithm(tmp_path: Path, spec_client: Ehr) -> None:
    rsa = SigningKey.generate("RS384", kid="example-kid")  # claims the EC key's kid
    token = spec_client.token(AUD, key=rsa)
    with pytest.raises(sec.AlgorithmNotAllowed):
        run(authenticator(tmp_path, spec_client), request_scope(token))


def test_a_forged_signature_is_refused(tmp_path: Path, spec_client: Ehr) -> None:
    forger = Ehr(spec_client.iss, [SigningKey.generate("ES384", kid="example-kid")])
    with pytest.raises(sec.BadSignature):
        run(authenticator(tmp_path, spec_client), request_scope(forger.token(AUD)))


def test_no_credentials(tmp_path: Path, spec_client: Ehr) -> None:
    with pytest.raises(sec.MissingToken):
        run(authenticator(tmp_path, spec_client), request_scope(None))
    with pytest.raises(sec.MalformedToken):
        run(authenticator(tmp_path, spec_client), request_scope("not-a-jwt"))


def test_refusal_messages_never_echo_the_token(tmp_path: Path, spec_client: Ehr) -> None:
    auth = authenticator(tmp_path, spec_client)
    token = spec_client.token(AUD, claims={"iss": "https://CANARY-ISS.test/"})
    with pytest.raises(sec.InvalidToken) as caught:
        run(auth, request_scope(token))
    text = caught.value.message + str(caught.value.headers)
    assert "CANARY" not in text and token[:20] not in text


# --- replay ----------------------------------------------------------------------------------
def test_a_replayed_jti_is_refused(tmp_path: Path, spec_client: Ehr) -> None:
    auth = authenticator(tmp_path, spec_client)
    token = spec_client.token(AUD)
    run(auth, request_scope(token))
    with pytest.raises(sec.TokenReplayed):
        run(auth, request_scope(token))
    # The same jti from another client is another token.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    other = Ehr("https://ehr-two.test/", [SigningKey.generate("ES384")])
    both = authenticator(tmp_path, spec_client, other)
    run(both, request_scope(spec_client.token(AUD, claims={"jti": jti})))
    run(both, request_scope(other.token(AUD, claims={"jti": jti})))


def test_replay_guard_forgets_at_expiry_and_fails_closed_when_full() -> None:
    clock = FakeClock()
    guard = ReplayGuard(2, clock=clock)
    guard.remember(b"a", clock.now + 10)
    with pytest.raises(sec.TokenReplayed):
        guard.remember(b"a", clock.now + 10)
    guard.remember(b"b", clock.now + 20)
    with pytest.raises(Overloaded):
        guard.remember(b"c", clock.now + 20)
    clock.advance(10)  # a expired: its place is free, and it may be used again
    guard.remember(b"c", clock.now + 20)
    assert len(guard) == 2
    clock.advance(10)
    guard.remember(b"a", clock.now + 5)
    assert len(guard) == 2  # b expired


# --- jku ---------------------------------------------------------------------------------------
def test_jku_is_used_only_when_allow_listed(tmp_path: Path, spec_client: Ehr) -> None:
    rotated = SigningKey.generate("ES384", kid="rotated-kid")
    with FhirServer([], token="unused") as ehr:
        ehr.static["/jwks"] = {"keys": [rotated.public_jwk]}
        jku = ehr.url.removesuffix("/fhir") + "/jwks"
        signer = Ehr(spec_client.iss, [rotated])
        # Not allow-listed: never fetched; the configured set has no such kid.
        plain = authenticator(tmp_path, spec_client)
        with pytest.raises(sec.UnknownKeyId):
            run(plain, request_scope(signer.token(AUD, headers={"jku": jku})))
        assert ehr.seen == []
        # Allow-listed for this iss: its set verifies the token.
        listed = authenticator(tmp_path, spec_client, jku=[jku])
        run(listed, request_scope(signer.token(AUD, headers={"jku": jku})))
        assert [s.path for s in ehr.seen] == ["/jwks"]
        # Tokens without jku still use the configured set.
        run(listed, request_scope(spec_client.token(AUD)))


def test_client_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one of jwks_file and jwks_url"):
        CdsClient(iss="https://x.test/")
    with pytest.raises(ConfigurationError, match="https"):
        trusted_client(CdsClient(iss="https://x.test/", jwks_url="http://ehr.example.org/jwks"))
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(ConfigurationError, match="holds no signing key"):
        trusted_client(CdsClient(iss="https://x.test/", jwks_file=tmp_path / "empty.json"))
    with pytest.raises(ConfigurationError, match="unusable"):
        trusted_client(CdsClient(iss="https://x.test/", jwks_file=tmp_path / "missing.json"))
    entry = {"iss": "https://x.test/", "jwks_file": "a.json"}
    with pytest.raises(ValueError, match="each iss may appear once"):
        Settings(cds_clients=[entry, entry])


def test_uuid_jti_digest_is_not_the_jti(tmp_path: Path, spec_client: Ehr) -> None:
    jti = str(uuid.uuid4())
    scope = request_scope(spec_client.token(AUD, claims={"jti": jti}))
    run(authenticator(tmp_path, spec_client), scope)
    assert jti not in str(scope[SCOPE_KEY].audit_details)
