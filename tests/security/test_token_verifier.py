"""Unit tests of TokenVerifier: every acceptance and refusal cause, the cache, key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from phiserve.config import Settings
from phiserve.errors import ConfigurationError, Unauthorized
from phiserve.security import errors as sec
from phiserve.security.authorization import BREAK_GLASS_SCOPE
from phiserve.security.jwks import FileKeySet
from phiserve.security.principal import Principal
from phiserve.security.tokens import TokenVerifier
from tests.security.helpers import AUDIENCE, CANARY, ISSUER, FakeClock, b64url, write_jwks

# Module-level "now" for claims far from the edges; edge cases read the clock when they run.
NOW = int(time.time())


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS assembled by hand (for tokens PyJWT refuses to produce)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": NOW + 300, "iat": NOW}
    base.update(over)
    return base


# --- valid tokens ------------------------------------------------------------------------------
def test_valid_es256_token_gives_principal(verifier: TokenVerifier, make_token) -> None:
    principal = verifier.verify(make_token())
    assert principal == Principal("alice", frozenset({"infer:breast-cancer", "metadata:read"}))
    assert principal.break_glass is False


def test_valid_rs256_token(verifier: TokenVerifier, make_token, rsa_key) -> None:
    assert verifier.verify(make_token(key=rsa_key)).subject == "alice"


def test_audience_list_containing_ours_is_accepted(verifier: TokenVerifier, make_token) -> None:
    assert verifier.verify(make_token(aud=["other", AUDIENCE])).subject == "alice"


def test_expiry_within_leeway_is_accepted(verifier: TokenVerifier, make_token) -> None:
    assert verifier.verify(make_token(exp=int(time.time()) - 10)).subject == "alice"


def test_scopes_from_scope_and_scp_claims(verifier: TokenVerifier, make_token) -> None:
    token = make_token(scope="infer:a  metadata:read", scp=["infer:b", 7, "bad\x01scope"])
    assert verifier.verify(token).scopes == {"infer:a", "infer:b", "metadata:read"}


def test_scp_as_string_and_no_scope_at_all(verifier: TokenVerifier, make_token) -> None:
    assert verifier.verify(make_token(scope=None, scp="infer:x")).scopes == {"infer:x"}
    assert verifier.verify(make_token(scope=None)).scopes == frozenset()


def test_break_glass_scope_is_flagged(verifier: TokenVerifier, make_token) -> None:
    principal = verifier.verify(make_token(scope=BREAK_GLASS_SCOPE))
    assert principal.break_glass is True
    assert principal.scopes == {BREAK_GLASS_SCOPE}


# --- refusals: each cause has its own class and message ----------------------------------------
@pytest.mark.parametrize(
    ("over", "error", "message"),
    [
        ({"exp": NOW - 120}, sec.TokenExpired, "token expired"),
        ({"iss": "https://evil.test/"}, sec.WrongIssuer, "wrong issuer"),
        ({"aud": "someone-else"}, sec.WrongAudience, "wrong audience"),
        ({"exp": None}, sec.MissingClaim, "missing required claim: exp"),
        ({"sub": None}, sec.MissingClaim, "missing required claim: sub"),
        ({"aud": None}, sec.MissingClaim, "missing required claim: aud"),
        ({"iss": None}, sec.MissingClaim, "missing required claim: iss"),
        ({"nbf": NOW + 3600}, sec.TokenNotYetValid, "token not yet valid"),
        ({"iat": NOW + 3600}, sec.TokenNotYetValid, "token not yet valid"),
        ({"exp": "tomorrow"}, sec.MalformedToken, "malformed token"),
        ({"sub": "a\nb"}, sec.MalformedToken, "malformed claim: sub"),
        ({"sub": "x" * 300}, sec.MalformedToken, "malformed claim: sub"),
        ({"scope": 42}, sec.MalformedToken, "malformed claim: scope"),
    ],
)
def test_claim_refusals(
    verifier: TokenVerifier, make_token, over: dict, error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        verifier.verify(make_token(**over))
    assert info.value.message == message
    assert info.value.status == 401
    assert isinstance(info.value, Unauthorized)


def test_nbf_within_leeway_is_accepted(verifier: TokenVerifier, make_token) -> None:
    assert (
        verifier.verify(make_token(nbf=int(time.time()) + 10, iat=int(time.time()) + 10)).subject
        == "alice"
    )


def test_signature_by_an_unpublished_key_under_a_known_kid(
    verifier: TokenVerifier, make_token, ec_key, other_ec_key, kid_of
) -> None:
    with pytest.raises(sec.BadSignature, match="bad signature"):
        verifier.verify(make_token(key=other_ec_key, kid=kid_of(ec_key)))


def test_tampered_payload_fails_signature(verifier: TokenVerifier, make_token) -> None:
    head, _, sig = make_token().split(".")
    forged = b64url(json.dumps(claims(sub="alice", scope=BREAK_GLASS_SCOPE)).encode())
    with pytest.raises(sec.BadSignature):
        verifier.verify(f"{head}.{forged}.{sig}")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None])
def test_alg_none_is_refused(verifier: TokenVerifier, ec_key, kid_of, alg: str | None) -> None:
    token = unsigned({"alg": alg, "typ": "JWT", "kid": kid_of(ec_key)}, claims())
    with pytest.raises(sec.AlgorithmNotAllowed, match="algorithm not allowed"):
        verifier.verify(token)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret_is_refused(
    verifier: TokenVerifier, ec_key, rsa_key, kid_of, alg: str
) -> None:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    for key in (rsa_key, ec_key):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": alg, "typ": "JWT", "kid": kid_of(key)}
        signing_input = (
            f"{b64url(json.dumps(header).encode())}."
            f"{b64url(json.dumps(claims(scope=BREAK_GLASS_SCOPE)).encode())}"
        )
        digest = getattr(hashlib, f"sha{alg[2:]}")
        mac = hmac.new(pem, signing_input.encode(), digest).digest()
        with pytest.raises(sec.AlgorithmNotAllowed):
            verifier.verify(f"{signing_input}.{b64url(mac)}")


def test_alg_of_another_key_family_is_refused(verifier: TokenVerifier, ec_key, kid_of) -> None:
    """RS256 claimed for an EC key's kid: refused before any signature check."""
    token = unsigned({"alg": "RS256", "kid": kid_of(ec_key)}, claims(), b"x" * 256)
    with pytest.raises(sec.AlgorithmNotAllowed):
        verifier.verify(token)


def test_alg_outside_configured_list_is_refused(keyset, make_token, rsa_key) -> None:
    es_only = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, algorithms=["ES256"])
    with pytest.raises(sec.AlgorithmNotAllowed):
        es_only.verify(make_token(key=rsa_key))


@pytest.mark.parametrize("algs", [["HS256"], ["RS256", "HS512"], ["none"], []])
def test_symmetric_or_none_algorithms_cannot_be_configured(keyset, algs: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, algorithms=algs)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "a.b.c.d", "x" * 9000, "eyJhbGciOiJFUzI1NiJ9.e30"],
)
def test_malformed_tokens(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(sec.MalformedToken):
        verifier.verify(token)


def test_non_string_kid_is_malformed(verifier: TokenVerifier) -> None:
    with pytest.raises(sec.MalformedToken, match="malformed"):
        verifier.verify(unsigned({"alg": "ES256", "kid": 7}, claims(), b"x" * 64))


# --- key ids, refresh and rotation -------------------------------------------------------------
def test_unknown_kid_then_refreshed_jwks_accepts_it(
    verifier: TokenVerifier, keyset_clock: FakeClock, jwks_file: Path, make_token, ec_key
) -> None:
    new_key = ec.generate_private_key(ec.SECP256R1())
    token = make_token(key=new_key)
    with pytest.raises(sec.UnknownKeyId, match="unknown key id"):
        verifier.verify(token)
    # The IdP publishes the new key; the rate limit still holds back a refetch ...
    write_jwks(jwks_file, ec_key, new_key)
    with pytest.raises(sec.UnknownKeyId):
        verifier.verify(token)
    # ... until the interval has passed: then the unknown kid triggers one refresh.
    keyset_clock.advance(11)
    assert verifier.verify(token).subject == "alice"


def test_random_kid_flood_refreshes_at_most_once_per_interval(
    verifier: TokenVerifier, keyset: FileKeySet, keyset_clock: FakeClock, make_token, monkeypatch
) -> None:
    loads = 0
    real = keyset._read

    def counting() -> Any:
        nonlocal loads
        loads += 1
        return real()

    monkeypatch.setattr(keyset, "_read", counting)
    keyset_clock.advance(60)
    for i in range(500):
        with pytest.raises(sec.UnknownKeyId):
            verifier.verify(make_token(kid=f"random-{i}"))
    assert loads == 1
    keyset_clock.advance(11)
    for i in range(500):
        with pytest.raises(sec.UnknownKeyId):
            verifier.verify(make_token(kid=f"again-{i}"))
    assert loads == 2


def test_token_without_kid_uses_a_single_key_set(tmp_path: Path, ec_key, make_token) -> None:
    path = tmp_path / "one.json"
    write_jwks(path, ec_key)
    keys = FileKeySet(path)
    keys.refresh(force=True)
    one = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE)
    assert one.verify(make_token(kid=None)).subject == "alice"


def test_token_without_kid_is_refused_with_several_keys(verifier: TokenVerifier, make_token):
    with pytest.raises(sec.UnknownKeyId):
        verifier.verify(make_token(kid=None))


def test_removed_key_invalidates_cached_verifications(
    verifier: TokenVerifier, keyset_clock: FakeClock, jwks_file: Path, make_token, rsa_key
) -> None:
    token = make_token()
    verifier.verify(token)
    write_jwks(jwks_file, rsa_key)  # the ES256 key is revoked
    keyset_clock.advance(11)
    verifier.keys.refresh()
    with pytest.raises(sec.UnknownKeyId):
        verifier.verify(token)


def test_failed_refresh_keeps_the_old_keys(
    verifier: TokenVerifier, keyset_clock: FakeClock, jwks_file: Path, make_token
) -> None:
    jwks_file.write_text("{not json")
    keyset_clock.advance(11)
    assert verifier.keys.refresh() is False
    assert verifier.verify(make_token()).subject == "alice"


def test_jwks_parsing_skips_unsafe_keys(tmp_path: Path, ec_key, rsa_key, caplog) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key))
    from phiserve.security.devkeys import public_jwk

    path = tmp_path / "jwks.json"
    unsafe = {
        "sym": {"kty": "oct", "kid": "sym", "k": b64url(b"secret")},
        "priv": {**private_jwk, "kid": "priv"},
        "weak": {**public_jwk(weak), "kid": "weak"},
        "enc": {**public_jwk(rsa_key), "kid": "enc", "use": "enc"},
        "rs-as-es": {**public_jwk(rsa_key), "kid": "rs-as-es", "alg": "ES256"},
        "ps": {**public_jwk(rsa_key), "kid": "ps", "alg": "PS256"},
        "k1": {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"},
    }
    good = public_jwk(ec_key)
    write_jwks(path, *unsafe.values(), {**good, "kid": 7}, good, {**public_jwk(rsa_key), **good})
    keys = FileKeySet(path)
    keys.refresh(force=True)
    assert len(keys) == 1
    assert keys.get(good["kid"]).algorithms == {"ES256"}
    assert not any(keys.get(kid) for kid in unsafe)
    for reason in (
        "symmetric keys are never accepted",
        "holds private key material",
        "RSA key shorter than 2048 bits",
        "unsupported key type or algorithm",  # PS256: not an algorithm phiserve verifies
        "kid is not a string",
        "duplicate kid",
    ):
        assert reason in caplog.text
    assert "secret" not in caplog.text


def test_a_key_verifies_only_its_own_algorithm(tmp_path: Path, rsa_key, make_token) -> None:
    """A JWK's ``alg`` binds the key; without one, its type's family applies (RFC 7517)."""
    from phiserve.security.devkeys import public_jwk

    path = tmp_path / "jwks.json"
    declared = {**public_jwk(rsa_key), "kid": "rs384", "alg": "RS384"}
    undeclared = {k: v for k, v in public_jwk(rsa_key).items() if k != "alg"} | {"kid": "plain"}
    write_jwks(path, declared, undeclared)
    keys = FileKeySet(path)
    keys.refresh(force=True)
    verifier = TokenVerifier(
        keys, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256", "RS384", "ES256"]
    )
    assert verifier.verify(make_token(key=rsa_key, alg="RS384", kid="rs384")).subject == "alice"
    for alg in ("RS256", "RS384"):
        assert verifier.verify(make_token(key=rsa_key, alg=alg, kid="plain")).subject == "alice"
    assert keys.get("plain").algorithms == {"RS256", "RS384", "RS512"}
    with pytest.raises(sec.AlgorithmNotAllowed):
        verifier.verify(make_token(key=rsa_key, alg="RS256", kid="rs384"))
    # The family is the key type's: an RSA key never verifies an EC algorithm.
    forged = jwt.encode({"sub": "x"}, "s" * 32, algorithm="HS256", headers={"kid": "plain"})
    rest = forged.partition(".")[2]
    es256 = base64.urlsafe_b64encode(b'{"alg":"ES256","kid":"plain"}').rstrip(b"=").decode()
    with pytest.raises(sec.AlgorithmNotAllowed):
        verifier.verify(f"{es256}.{rest}")


@pytest.mark.parametrize("document", [{"nokeys": []}, {"keys": []}, {"keys": {}}, ["keys"]])
def test_jwks_without_a_keys_list_is_refused(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    with pytest.raises(jwt.exceptions.PyJWKSetError):
        FileKeySet(path).refresh(force=True)


def test_refresh_to_a_set_without_usable_keys_keeps_the_old_keys(
    verifier: TokenVerifier, keyset_clock: FakeClock, jwks_file: Path, make_token
) -> None:
    jwks_file.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "s", "k": b64url(b"x")}]}))
    keyset_clock.advance(11)
    assert verifier.keys.refresh() is False
    assert verifier.verify(make_token()).subject == "alice"


# --- the cache ---------------------------------------------------------------------------------
def _count_decodes(verifier: TokenVerifier, monkeypatch) -> list[int]:
    calls = [0]
    real = verifier._jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(verifier._jwt, "decode", counting)
    return calls


def test_repeated_token_is_verified_once(keyset, make_token, monkeypatch) -> None:
    clock = FakeClock(time.time())
    cached = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    calls = _count_decodes(cached, monkeypatch)
    token = make_token()
    first = cached.verify(token)
    for _ in range(100):
        assert cached.verify(token) is first
    assert calls[0] == 1
    clock.advance(61)  # past the cache TTL: verified again
    cached.verify(token)
    assert calls[0] == 2


def test_cache_never_outlives_exp(keyset, make_token, monkeypatch) -> None:
    clock = FakeClock(time.time())
    cached = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    calls = _count_decodes(cached, monkeypatch)
    token = make_token(exp=int(clock.now) + 5)
    cached.verify(token)
    clock.advance(6)
    cached.verify(token)  # real time has not reached exp, so PyJWT accepts; the cache did not
    assert calls[0] == 2


def test_cache_is_bounded(keyset, make_token) -> None:
    small = TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE, cache_size=8)
    for i in range(50):
        small.verify(make_token(jti=f"t-{i}"))
    assert len(small._cache) == 8


def test_refusals_are_not_cached_as_success(verifier: TokenVerifier, make_token) -> None:
    token = make_token(exp=NOW - 120)
    for _ in range(3):
        with pytest.raises(sec.TokenExpired):
            verifier.verify(token)
    assert len(verifier._cache) == 0


def test_cache_holds_digests_not_tokens(verifier: TokenVerifier, make_token) -> None:
    token = make_token()
    verifier.verify(token)
    assert all(isinstance(k, bytes) and len(k) == 32 for k in verifier._cache)
    assert token not in repr(verifier._cache)


# --- messages never echo the token -------------------------------------------------------------
def test_no_refusal_message_echoes_the_token(verifier: TokenVerifier, make_token, other_ec_key):
    tokens = [
        make_token(sub=CANARY, iss=CANARY),
        make_token(sub=CANARY, aud=CANARY),
        make_token(sub=CANARY, exp=NOW - 999),
        make_token(sub=CANARY, key=other_ec_key, kid=CANARY),
        make_token(kid=None, headers={"kid": CANARY, "x": CANARY}),
        unsigned({"alg": CANARY}, claims(sub=CANARY)),
        unsigned({"alg": "none"}, claims(sub=CANARY)),
        CANARY,
        f"{CANARY}.{CANARY}.{CANARY}",
    ]
    for token in tokens:
        with pytest.raises(Unauthorized) as info:
            verifier.verify(token)
        exc = info.value
        shown = exc.message + str(exc) + json.dumps(exc.headers) + repr(exc.__cause__)
        assert CANARY not in shown
        assert exc.__cause__ is None  # PyJWT's own text is not chained either
        assert token not in shown


# --- from settings -----------------------------------------------------------------------------
def test_from_settings_with_missing_jwks_file(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(ConfigurationError, match="phiserve token init"):
        TokenVerifier.from_settings(settings)


def test_from_settings_with_empty_jwks_file(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    settings = Settings(home=tmp_path, jwks_file=tmp_path / "jwks.json")
    with pytest.raises(ConfigurationError, match="no signing key"):
        TokenVerifier.from_settings(settings)


def test_from_settings_reads_issuer_audience_algorithms(tmp_path: Path, jwks_file: Path) -> None:
    settings = Settings(
        home=tmp_path, jwks_file=jwks_file, oidc_issuer=ISSUER, jwt_algorithms=["ES256"]
    )
    verifier = TokenVerifier.from_settings(settings)
    assert (verifier.issuer, verifier.audience) == (ISSUER, "phiserve")
    assert verifier.algorithms == {"ES256"}
    assert len(verifier.keys) == 2
