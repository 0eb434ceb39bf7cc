"""CDS clients for tests: the spec's example P-384 key and keys the tests generate, their JWK
Sets, and the JWTs an EHR signs for each call."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

# CDS Hooks 2.0, "Trusting CDS Clients", example: the published private key (kid example-kid).
SPEC_ISS = "https://fhir-ehr.example.com/"
SPEC_PRIVATE_JWK: dict[str, str] = {
    "kty": "EC",
    "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy",
    "use": "sig",
    "crv": "P-384",
    "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}


@dataclass
class SigningKey:
    """A private key, its kid and algorithm, and its public JWK."""

    kid: str
    alg: str
    private: Any
    public_jwk: dict[str, Any]

    @classmethod
    def spec_example(cls) -> SigningKey:
        """The spec's published P-384 key."""
        private = jwt.PyJWK(SPEC_PRIVATE_JWK).key
        public = {k: v for k, v in SPEC_PRIVATE_JWK.items() if k != "d"}
        return cls("example-kid", "ES384", private, public)

    @classmethod
    def generate(cls, alg: str, kid: str | None = None) -> SigningKey:
        """A fresh key for ``alg`` (ES256/ES384/ES512 or RS256/RS384/RS512)."""
        kid = kid or f"test-{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
            private: Any = ec.generate_private_key(curve[alg])
            public = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        public.update(kid=kid, alg=alg, use="sig")
        return cls(kid, alg, private, public)


@dataclass
class Ehr:
    """A CDS client: its issuer, keys and the calls it signs."""

    iss: str
    keys: list[SigningKey]
    jku: list[str] = field(default_factory=list)

    def jwks(self) -> dict[str, Any]:
        """Its public JWK Set."""
        return {"keys": [k.public_jwk for k in self.keys]}

    def write_jwks(self, path: Path) -> Path:
        """Write the public set to ``path``."""
        path.write_text(json.dumps(self.jwks()))
        return path

    def client_entry(self, jwks_file: Path, **extra: Any) -> dict[str, Any]:
        """Its ``PHISERVE_CDS_CLIENTS`` entry."""
        return {"iss": self.iss, "jwks_file": str(jwks_file), **extra}

    def token(
        self,
        aud: str | list[str],
        *,
        key: SigningKey | None = None,
        lifetime_s: float = 60,
        claims: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        """A fresh JWT for a call to ``aud`` (a new jti each time)."""
        key = key or self.keys[0]
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "exp": now + int(lifetime_s),
            "iat": now,
            "jti": str(uuid.uuid4()),
            "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
            **(claims or {}),
        }
        for name in drop:
            body.pop(name, None)
        # A header given as None is left out (a token without kid, say).
        head = {k: v for k, v in {"kid": key.kid, "typ": "JWT", **(headers or {})}.items() if v}
        return jwt.encode(body, key.private, algorithm=key.alg, headers=head)

    def auth(self, aud: str, **kwargs: Any) -> dict[str, str]:
        """The Authorization header for one call to ``aud``."""
        return {"Authorization": f"Bearer {self.token(aud, **kwargs)}"}


def spec_ehr() -> Ehr:
    """The spec's example client (iss and key as published)."""
    return Ehr(SPEC_ISS, [SigningKey.spec_example()])
