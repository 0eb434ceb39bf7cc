"""Constants and helpers shared by the security tests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from phiserve.security.devkeys import public_jwk

ISSUER = "https://idp.test/realms/phiserve"
AUDIENCE = "phiserve"
CANARY = "CANARY-7f3a9c-PHI"


class FakeClock:
    """A monotonic clock the tests move by hand (for rate limits and cache TTLs)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_jwks(path: Path, *keys: Any) -> None:
    """Write the public JWKs of private ``keys`` (or raw JWK dicts) to ``path``."""
    jwks = [k if isinstance(k, dict) else public_jwk(k) for k in keys]
    path.write_text(json.dumps({"keys": jwks}))
