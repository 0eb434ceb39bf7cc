"""Fixtures for the security tests: signing keys, JWKS files, a token factory and a verifier."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from phiserve.security.devkeys import public_jwk
from phiserve.security.jwks import FileKeySet
from phiserve.security.tokens import TokenVerifier
from tests.security.helpers import AUDIENCE, ISSUER, FakeClock, write_jwks


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    """The IdP's ES256 signing key."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """The IdP's RS256 signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def other_ec_key() -> ec.EllipticCurvePrivateKey:
    """A key the IdP never published (an attacker's)."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_file(tmp_path: Path, ec_key: Any, rsa_key: Any) -> Path:
    """A JWKS file with the ES256 and RS256 public keys."""
    path = tmp_path / "jwks.json"
    write_jwks(path, ec_key, rsa_key)
    return path


@pytest.fixture
def keyset_clock() -> FakeClock:
    """The clock of the key set's rate limit."""
    return FakeClock()


@pytest.fixture
def keyset(jwks_file: Path, keyset_clock: FakeClock) -> FileKeySet:
    """The JWKS file, loaded."""
    keys = FileKeySet(jwks_file, clock=keyset_clock)
    keys.refresh(force=True)
    return keys


@pytest.fixture
def verifier(keyset: FileKeySet) -> TokenVerifier:
    """A verifier for ISSUER / AUDIENCE with the default algorithms."""
    return TokenVerifier(keyset, issuer=ISSUER, audience=AUDIENCE)


MakeToken = Callable[..., str]


@pytest.fixture
def make_token(ec_key: Any) -> MakeToken:
    """Build a signed token: claim overrides (None drops a claim), key, alg, kid, extra header."""

    def make(
        *,
        key: Any = None,
        alg: str | None = None,
        kid: str | bool | None = True,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or ec_key
        alg = alg or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256")
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "scope": "infer:breast-cancer metadata:read",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "t-1",
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        header = dict(headers or {})
        if kid is True:
            header["kid"] = public_jwk(key)["kid"]
        elif isinstance(kid, str):
            header["kid"] = kid
        return jwt.encode(body, key, algorithm=alg, headers=header)

    return make


@pytest.fixture
def kid_of() -> Callable[[Any], str]:
    """The kid that the JWKS helpers give a key."""
    return lambda key: public_jwk(key)["kid"]
