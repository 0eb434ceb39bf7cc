"""Development signing key, its JWKS, and short-lived dev tokens.

For local use only: ``make serve`` (through ``phiserve dev init`` / ``phiserve token init``)
creates a private key at ``settings.signing_key_file`` (0600, folder 0700) and publishes its
public half in the JWKS at ``settings.jwks_path``, which the server verifies against.
``phiserve token issue`` then signs tokens with it. Private keys are generated on the machine that
uses them and never committed. In production the IdP signs tokens and ``PHISERVE_JWKS_URL`` points
at its ``jwks_uri``; none of this module runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from phiserve.errors import BadRequest, ConfigurationError

if TYPE_CHECKING:
    from phiserve.config import Settings

DEFAULT_TTL_S: Final = 900
MAX_TTL_S: Final = 24 * 3600
_SCOPE_OK = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 scope-token
_SUBJECT_OK = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _dev_algorithm(settings: Settings) -> str:
    """ES256 when the server accepts it (small, fast keys), else RS256."""
    for alg in ("ES256", "RS256"):
        if alg in settings.jwt_algorithms:
            return alg
    raise ConfigurationError("dev tokens need ES256 or RS256 in PHISERVE_JWT_ALGORITHMS")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: never overwrite (or follow a planted link to) an existing file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_signing_key(path: Path) -> PrivateKey:
    """The dev private key; refused when missing or readable by group or others."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"signing key {path} is readable by group or others "
                f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigurationError(
            f"signing key {path} not found; run 'phiserve token init'"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"signing key {path} is malformed: {type(exc).__name__}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigurationError(f"signing key {path} is neither EC nor RSA")
    return key


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid`` (its RFC 7638 thumbprint), ``alg`` and ``use``."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk, alg = ECAlgorithm.to_jwk(public, as_dict=True), "ES256"
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    else:
        jwk, alg = RSAAlgorithm.to_jwk(public, as_dict=True), "RS256"
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


def ensure_dev_keys(settings: Settings) -> None:
    """Create the dev signing key and publish it in the JWKS file; idempotent.

    An existing key is kept (and checked for 0600); an existing JWKS keeps its other keys and
    gains this one if absent, so tokens signed before a key rotation keep verifying.
    """
    path = settings.signing_key_file
    if not path.exists():
        key: PrivateKey
        if _dev_algorithm(settings) == "ES256":
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(path, pem)
    jwk = public_jwk(load_signing_key(path))
    jwks_path = settings.jwks_path
    keys: list[dict[str, Any]] = []
    if jwks_path.exists():
        try:
            keys = list(json.loads(jwks_path.read_text())["keys"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"JWKS file {jwks_path} is malformed: {type(exc).__name__}"
            ) from None
    if any(isinstance(k, dict) and k.get("kid") == jwk["kid"] for k in keys):
        return
    keys.append(jwk)
    _write_public(jwks_path, (json.dumps({"keys": keys}, indent=2) + "\n").encode())


def issue_token(
    settings: Settings,
    subject: str,
    scopes: Iterable[str],
    *,
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """A dev token for ``subject`` with ``scopes``, signed with the dev key, valid ``ttl_s``.

    Claims: ``iss`` and ``aud`` from settings, ``sub``, ``scope`` (space-separated), ``iat``,
    ``nbf``, ``exp`` and a random ``jti``. TTLs above 24 hours are refused: dev tokens stay short.
    """
    if not 0 < ttl_s <= MAX_TTL_S:
        raise BadRequest(f"ttl must be between 1 and {MAX_TTL_S} seconds")
    if not _SUBJECT_OK.match(subject):
        raise BadRequest("subject must be 1-256 printable ASCII characters")
    scope_list = sorted({s for item in scopes for s in item.split()})
    bad = [s for s in scope_list if not _SCOPE_OK.match(s)]
    if bad:
        raise BadRequest(f"{len(bad)} malformed scope(s); use e.g. 'infer:breast-cancer'")
    key = load_signing_key(settings.signing_key_file)
    jwk = public_jwk(key)
    if jwk["alg"] not in settings.jwt_algorithms:
        raise ConfigurationError(
            f"the dev key signs {jwk['alg']}, which PHISERVE_JWT_ALGORITHMS does not allow"
        )
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": settings.oidc_issuer,
        "aud": settings.oidc_audience,
        "sub": subject,
        "scope": " ".join(scope_list),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, key, algorithm=jwk["alg"], headers={"kid": jwk["kid"]})
