"""Tokens for end-to-end tests: valid ones from the dev key, and every kind of bad one."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from phiserve.config import Settings
from phiserve.security.devkeys import load_signing_key, public_jwk


def make_token(home: Path, *, key: Any = None, kid: str | None = None, **claims: Any) -> str:
    """A token signed by the home's dev key (or ``key``); ``claims`` override the defaults."""
    settings = Settings(home=home)
    signing = key or load_signing_key(settings.signing_key_file)
    jwk = public_jwk(load_signing_key(settings.signing_key_file))
    now = int(time.time())
    body = {
        "iss": settings.oidc_issuer,
        "aud": settings.oidc_audience,
        "sub": "tester",
        "scope": "infer:* metadata:read",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, signing, algorithm=jwk["alg"], headers={"kid": kid or jwk["kid"]})


def bad_tokens(home: Path) -> dict[str, str]:
    """Name -> token that must be refused with 401."""
    now = int(time.time())
    stranger = ec.generate_private_key(ec.SECP256R1())
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(
        b"="
    )
    payload = base64.urlsafe_b64encode(json.dumps({"sub": "x", "exp": now + 60}).encode()).rstrip(
        b"="
    )
    return {
        "expired": make_token(home, iat=now - 600, nbf=now - 600, exp=now - 300),
        "wrong_issuer": make_token(home, iss="https://evil.example"),
        "wrong_audience": make_token(home, aud="someone-else"),
        "bad_signature": make_token(home, key=stranger),
        "unknown_kid": make_token(home, key=stranger, kid="not-a-known-kid"),
        "alg_none": f"{header.decode()}.{payload.decode()}.",
        "missing_exp": make_token(home, exp=None),
    }
