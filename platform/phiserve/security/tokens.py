"""Verification of OIDC bearer tokens (JWT) into a :class:`Principal`.

Checks, in order: a compact JWS of bounded size; an allowed asymmetric ``alg`` (``none`` and HS*
are never in the list, so the classic "HS256 with the public key as secret" confusion cannot
happen); a known ``kid`` whose key type fits that ``alg``; the signature; then ``iss``, ``aud``,
``exp`` (required), ``nbf`` and ``iat`` with a small leeway, and a ``sub``.

Successful verifications are cached by a SHA-256 digest of the token (the token itself is never
kept) until the earlier of its ``exp`` and a short TTL, in a bounded LRU: a repeated token costs
one hash and a dict lookup per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import jwt
from jwt import exceptions as jwt_errors

from phiserve.errors import ConfigurationError
from phiserve.security.authorization import BREAK_GLASS_SCOPE
from phiserve.security.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    TokenExpired,
    TokenNotYetValid,
    UnknownKeyId,
    WrongAudience,
    WrongIssuer,
)
from phiserve.security.jwks import FileKeySet, KeySet, UrlKeySet
from phiserve.security.principal import Principal

if TYPE_CHECKING:
    from phiserve.config import Settings

# Only asymmetric algorithms can ever be configured: this is the backstop if a caller passes more.
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_BYTES: Final = 8192
_REQUIRED_CLAIMS: Final = ("exp", "sub", "iss", "aud")
_SUBJECT_OK = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$")
_SCOPE_OK = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")  # RFC 6749 scope-token
_MAX_SCOPES: Final = 256


def asymmetric(algorithms: Iterable[str]) -> frozenset[str]:
    """``algorithms`` as a set, if it is a non-empty set of asymmetric ones; else a start-up
    error (``none`` and HMAC must never verify a token)."""
    algs = frozenset(algorithms)
    if not algs or not algs <= ASYMMETRIC_ALGORITHMS:
        raise ConfigurationError(
            f"JWT algorithms must be asymmetric: {sorted(algs - ASYMMETRIC_ALGORITHMS)}"
        )
    return algs


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """Scopes from the standard ``scope`` string and/or an ``scp`` list (or string)."""
    found: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.extend(value.split())
        elif isinstance(value, list):
            found.extend(v for v in value if isinstance(v, str))
        elif value is not None:
            raise MalformedToken(f"malformed claim: {name}")
    # Scopes end up in the request context: keep only well-formed tokens, and a bounded number.
    return frozenset(s for s in found[:_MAX_SCOPES] if _SCOPE_OK.match(s))


class TokenVerifier:
    """Verifies bearer tokens against one issuer, audience and key set."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("RS256", "ES256"),
        leeway_s: float = 30.0,
        cache_size: int = 4096,
        cache_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        algs = asymmetric(algorithms)
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algs
        self.leeway_s = leeway_s
        self.cache_size = cache_size
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._jwt = jwt.PyJWT(
            options={"require": list(_REQUIRED_CLAIMS), "enforce_minimum_key_length": True}
        )
        # digest -> (valid until, principal); guarded by a lock as threads may verify too.
        self._cache: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._generation = keys.generation
        self._inflight: asyncio.Future[bool] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> TokenVerifier:
        """A verifier for the OIDC settings; loads the JWKS now.

        A missing or unusable JWKS *file* is a start-up error. An unreachable JWKS *URL* is
        logged and retried on demand (rate-limited), so an IdP blip does not stop the pod.
        """
        keys: KeySet
        if settings.jwks_url:
            keys = UrlKeySet(settings.jwks_url)
            keys.refresh()
        else:
            keys = FileKeySet(settings.jwks_path)
            try:
                keys.refresh(force=True)
            except FileNotFoundError:
                raise ConfigurationError(
                    f"JWKS file {settings.jwks_path} not found; run 'phiserve token init' "
                    "or set PHISERVE_JWKS_FILE / PHISERVE_JWKS_URL"
                ) from None
            except jwt_errors.PyJWKSetError:
                raise ConfigurationError(
                    f"JWKS file {settings.jwks_path} holds no signing key"
                ) from None
            except Exception as exc:
                raise ConfigurationError(
                    f"JWKS file {settings.jwks_path} is unusable: {type(exc).__name__}"
                ) from None
        return cls(
            keys,
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            algorithms=settings.jwt_algorithms,
            **kwargs,
        )

    # --- cache --------------------------------------------------------------------------------
    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def _cached(self, digest: bytes) -> Principal | None:
        if self._generation != self.keys.generation:
            self.clear_cache()  # a key was removed: what it verified must be checked again
        with self._cache_lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return entry[1]

    def _remember(self, digest: bytes, principal: Principal, exp: float, generation: int) -> None:
        until = min(exp, self._clock() + self.cache_ttl_s)
        with self._cache_lock:
            if generation != self._generation:
                return  # a key was dropped while this token was being verified: do not cache
            self._cache[digest] = (until, principal)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget every cached verification (after a key rotation or revocation)."""
        with self._cache_lock:
            self._cache.clear()
            self._generation = self.keys.generation

    # --- verification -------------------------------------------------------------------------
    def _header(self, token: str) -> tuple[str, str | None]:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise MalformedToken()
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise MalformedToken() from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AlgorithmNotAllowed()
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken("malformed header: kid")
        return alg, kid

    def _decode(self, token: str, digest: bytes, alg: str, kid: str | None) -> Principal:
        generation = self.keys.generation
        key = self.keys.get(kid)
        if key is None:
            raise UnknownKeyId()
        if alg not in key.algorithms:
            # e.g. RS256 claimed for an EC key: refused before any crypto runs.
            raise AlgorithmNotAllowed()
        try:
            claims = self._jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
            )
        except jwt_errors.PyJWTError as exc:
            raise refusal(exc) from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not _SUBJECT_OK.match(subject):
            raise MalformedToken("malformed claim: sub")
        scopes = _scopes(claims)
        principal = Principal(subject, scopes, BREAK_GLASS_SCOPE in scopes)
        self._remember(digest, principal, float(claims["exp"]), generation)
        return principal

    def verify(self, token: str) -> Principal:
        """Verify ``token`` (the bearer credential, without ``Bearer``); raise an InvalidToken.

        Synchronous: an unknown ``kid`` may refresh the key set inline (a file read or a fetch
        with a short timeout). Async callers use :meth:`averify`, which does that in a thread.
        """
        digest = self._digest(token)
        principal = self._cached(digest)
        if principal is not None:
            return principal
        alg, kid = self._header(token)
        if self.keys.needs_refresh(kid):
            self.keys.refresh()
        return self._decode(token, digest, alg, kid)

    async def averify(self, token: str) -> Principal:
        """:meth:`verify` for the event loop: key-set refreshes run in a worker thread.

        Concurrent requests that need a refresh share one in-flight fetch.
        """
        digest = self._digest(token)
        principal = self._cached(digest)
        if principal is not None:
            return principal
        alg, kid = self._header(token)
        waiting = self._inflight is not None and self.keys.get(kid) is None
        if waiting or self.keys.needs_refresh(kid):
            await self._refresh_once()
        return self._decode(token, digest, alg, kid)

    async def _refresh_once(self) -> None:
        inflight = self._inflight
        if inflight is None or inflight.get_loop() is not asyncio.get_running_loop():
            inflight = asyncio.ensure_future(asyncio.to_thread(self.keys.refresh))
            self._inflight = inflight

            def _done(fut: asyncio.Future[bool]) -> None:
                if self._inflight is fut:
                    self._inflight = None

            inflight.add_done_callback(_done)
        # shield: one cancelled request must not cancel the refresh the others wait on.
        await asyncio.shield(inflight)


def refusal(
    exc: jwt_errors.PyJWTError, required: tuple[str, ...] = _REQUIRED_CLAIMS
) -> InvalidToken:
    """Map a PyJWT error to our cause class; PyJWT's own message is never passed on.

    ``required`` names the claims a missing-claim message may name (the caller's required ones).
    """
    match exc:
        case jwt_errors.ExpiredSignatureError():
            return TokenExpired()
        case jwt_errors.ImmatureSignatureError():
            return TokenNotYetValid()
        case jwt_errors.InvalidIssuerError():
            return WrongIssuer()
        case jwt_errors.InvalidAudienceError():
            return WrongAudience()
        case jwt_errors.MissingRequiredClaimError():
            claim = exc.claim if exc.claim in required else "claim"
            return MissingClaim(f"missing required claim: {claim}")
        case jwt_errors.InvalidSignatureError():
            return BadSignature()
        case jwt_errors.InvalidAlgorithmError():
            return AlgorithmNotAllowed()
        case jwt_errors.InvalidKeyError():
            return BadSignature("key not usable")
        case _:
            return MalformedToken()
