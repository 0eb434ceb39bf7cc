"""CDS Hooks client authentication: the JWT an EHR signs for every call it makes to a CDS service
(CDS Hooks 2.0, "Trusting CDS Clients"), as the authenticator of the ``cds-client`` routes.

This is not the OIDC bearer token of the V2 API: the EHR signs a fresh, single-use token per call
with its own key. Checks, in order:

1. one ``Authorization: Bearer`` credential of bounded size (as for every route);
2. the header: ``alg`` in the allowed list (``PHISERVE_CDS_JWT_ALGORITHMS``; ``none`` and HMAC
   can never be listed: the spec forbids both), ``kid`` present, ``typ`` ``JWT``;
3. the (not yet verified) ``iss`` names a trusted client (``PHISERVE_CDS_CLIENTS``);
4. that client's key set holds ``kid``: the set configured for it (file or URL), or, when the
   token's ``jku`` header names a URL on the client's ``jku`` allow-list, the set at that URL. A
   ``jku`` that is not allow-listed is never fetched (the configured set is used). An unknown
   ``kid`` refreshes the set, rate-limited (:mod:`phiserve.security.jwks`);
5. the key type fits ``alg``, and the signature verifies;
6. ``aud`` is the exact URL called (``PHISERVE_CDS_BASE_URL`` plus the request path), ``exp``,
   ``iat`` and ``jti`` are present, ``iat`` is not in the future and ``exp`` not further ahead
   than ``PHISERVE_CDS_JWT_MAX_LIFETIME_S`` (each with a small leeway);
7. the ``jti`` was not seen before from this ``iss``; it is then remembered until its ``exp``
   (:class:`ReplayGuard`, bounded: when it is full of live tokens, calls get 503, fail closed).

Algorithms: ES384 and RS384 (the spec's recommendation) and, by default, ES256 and RS256, which
many EHRs and the public CDS Hooks sandbox sign with; each key verifies only its own family
(an EC key its curve's ES* algorithm).

The principal is the client's ``iss`` with the scopes ``cds:<service>`` of the services it may
call (``cds:*`` for all); the request's audit record gets the ``iss`` and a SHA-256 of the
``jti`` (the record ties a call to the token that made it without storing the token).

The replay store lives in the process: behind several replicas, a token could be replayed once
against each other replica within its lifetime, which the maximum lifetime bounds.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt import exceptions as jwt_errors
from jwt.exceptions import PyJWKSetError
from starlette.types import Scope

from phiserve.config import CdsClient, Settings
from phiserve.context import get_context
from phiserve.errors import ConfigurationError, Overloaded
from phiserve.http.routing import Route
from phiserve.security.authorization import CDS_ANY, cds_scope
from phiserve.security.errors import (
    AlgorithmNotAllowed,
    MalformedToken,
    MissingClaim,
    TokenLifetimeTooLong,
    TokenNotYetValid,
    TokenReplayed,
    UnknownKeyId,
    WrongIssuer,
)
from phiserve.security.jwks import FileKeySet, KeySet, UrlKeySet
from phiserve.security.middleware import bearer_token
from phiserve.security.principal import Principal
from phiserve.security.tokens import asymmetric, refusal

log = logging.getLogger(__name__)

CDS_CLIENT: Final = "cds-client"
_REQUIRED_CLAIMS: Final = ("iss", "aud", "exp", "iat", "jti")
_MAX_JTI: Final = 255


class ReplayGuard:
    """Remembers each ``(iss, jti)`` until its token expires; refuses a second use.

    Entries are SHA-256 digests, with a heap of expiry times so expired ones are dropped as new
    ones arrive. Called on the event loop only (no lock).
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity
        self._clock = clock
        self._until: dict[bytes, float] = {}
        self._expiry: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._until)

    def remember(self, key: bytes, until: float) -> None:
        """Record ``key`` as used until ``until``; raise if it was used, or if the store is full."""
        now = self._clock()
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            # Each key is stored once (a second use is refused), so the heap and dict agree.
            del self._until[heapq.heappop(expiry)[1]]
        if key in self._until:
            raise TokenReplayed()
        if len(self._until) >= self.capacity:
            log.warning("CDS replay store full (%d live tokens): refusing calls", self.capacity)
            raise Overloaded("too many CDS client tokens in flight; retry shortly")
        self._until[key] = until
        heapq.heappush(expiry, (until, key))


@dataclass(frozen=True, slots=True)
class TrustedClient:
    """A CDS client's keys and the scopes its calls get."""

    iss: str
    keys: KeySet
    # Allow-listed ``jku`` URL -> its key set (fetched on first use).
    jku_keys: Mapping[str, KeySet]
    scopes: frozenset[str]

    def key_set(self, jku: str | None) -> KeySet:
        """The set a token's ``kid`` is looked up in."""
        if jku is not None and jku in self.jku_keys:
            return self.jku_keys[jku]
        return self.keys


def trusted_client(entry: CdsClient) -> TrustedClient:
    """Load one configured client's key set now (a bad file stops start-up; a URL may wait)."""
    keys: KeySet
    if entry.jwks_url is not None:
        keys = _url_keys(entry, entry.jwks_url)
        keys.refresh()  # an unreachable EHR key endpoint is retried on demand, rate-limited
    else:
        assert entry.jwks_file is not None  # CdsClient requires one of the two
        keys = FileKeySet(entry.jwks_file)
        try:
            keys.refresh(force=True)
        except PyJWKSetError:
            raise ConfigurationError(
                f"CDS client {entry.iss!r}: JWKS file {entry.jwks_file} holds no signing key"
            ) from None
        except Exception as exc:
            raise ConfigurationError(
                f"CDS client {entry.iss!r}: JWKS file {entry.jwks_file} is unusable "
                f"({type(exc).__name__})"
            ) from None
    jku_keys = {url: _url_keys(entry, url) for url in entry.jku}
    services = entry.services
    scopes = frozenset({CDS_ANY} if services is None else map(cds_scope, services))
    return TrustedClient(entry.iss, keys, jku_keys, scopes)


def _url_keys(entry: CdsClient, url: str) -> UrlKeySet:
    try:
        return UrlKeySet(url)
    except ConfigurationError:
        raise ConfigurationError(
            f"CDS client {entry.iss!r}: JWKS URLs must be https (plain http only on loopback)"
        ) from None


class CdsClientAuthenticator:
    """Verifies CDS client JWTs into a :class:`Principal` (see the module docstring)."""

    def __init__(
        self,
        clients: Iterable[TrustedClient],
        *,
        base_url: str,
        algorithms: Iterable[str],
        max_lifetime_s: float,
        replay: ReplayGuard,
        leeway_s: float = 30.0,
    ) -> None:
        self.algorithms = asymmetric(algorithms)
        self.clients = {client.iss: client for client in clients}
        self.base_url = base_url.rstrip("/")
        self.max_lifetime_s = max_lifetime_s
        self.replay = replay
        self.leeway_s = leeway_s
        self._jwt = jwt.PyJWT(
            options={"require": list(_REQUIRED_CLAIMS), "enforce_minimum_key_length": True}
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CdsClientAuthenticator:
        """The authenticator of ``PHISERVE_CDS_*``; loads every client's key set now."""
        return cls(
            [trusted_client(entry) for entry in settings.cds_clients],
            base_url=settings.cds_url,
            algorithms=settings.cds_jwt_algorithms,
            max_lifetime_s=settings.cds_jwt_max_lifetime_s,
            replay=ReplayGuard(settings.cds_replay_cache_size),
        )

    def audience(self, scope: Scope) -> str:
        """The ``aud`` a token for this request must carry: the exact URL called."""
        return self.base_url + scope["path"]

    async def authenticate(self, scope: Scope, route: Route | None) -> Principal:
        """Verify the request's client JWT; remember its ``jti``; note the facts for audit."""
        token = bearer_token(scope["headers"])
        alg, kid, jku = self._header(token)
        client = self._client(token)
        keys = client.key_set(jku)
        if keys.needs_refresh(kid):
            await asyncio.to_thread(keys.refresh)
        key = keys.get(kid)
        if key is None:
            raise UnknownKeyId()
        if alg not in key.algorithms:
            raise AlgorithmNotAllowed()  # e.g. RS384 claimed for an EC key: no crypto runs
        try:
            claims = self._jwt.decode(
                token,
                key.jwk.key,
                algorithms=[alg],
                audience=self.audience(scope),
                issuer=client.iss,
                leeway=self.leeway_s,
            )
        except jwt_errors.PyJWTError as exc:
            raise refusal(exc, _REQUIRED_CLAIMS) from None
        jti = self._check_claims(claims)
        digest = hashlib.sha256(f"{client.iss}\x00{jti}".encode()).digest()
        self.replay.remember(digest, float(claims["exp"]) + self.leeway_s)
        get_context(scope).audit_details = {
            "cds_client": client.iss,
            "cds_jti_sha256": hashlib.sha256(jti.encode()).hexdigest()[:32],
        }
        return Principal(client.iss, client.scopes)

    def _header(self, token: str) -> tuple[str, str, str | None]:
        if token.count(".") != 2:
            raise MalformedToken()
        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError:
            raise MalformedToken() from None
        alg, kid, typ, jku = (header.get(k) for k in ("alg", "kid", "typ", "jku"))
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AlgorithmNotAllowed()
        if not isinstance(kid, str) or not kid:
            raise MalformedToken("malformed header: kid is required")
        # RFC 7515 4.1.9: typ values compare case-insensitively.
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise MalformedToken("malformed header: typ must be JWT")
        if jku is not None and not isinstance(jku, str):
            raise MalformedToken("malformed header: jku")
        return alg, kid, jku

    def _client(self, token: str) -> TrustedClient:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt_errors.PyJWTError:
            raise MalformedToken() from None
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise MissingClaim("missing required claim: iss")
        client = self.clients.get(iss)
        if client is None:
            raise WrongIssuer("issuer is not a trusted CDS client")
        return client

    def _check_claims(self, claims: Mapping[str, Any]) -> str:
        now = time.time()
        iat, exp, jti = claims["iat"], claims["exp"], claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise MalformedToken("malformed claim: jti")
        if float(iat) > now + self.leeway_s:  # PyJWT checks iat too, from 2.10 on
            raise TokenNotYetValid()
        if float(exp) > now + self.max_lifetime_s + self.leeway_s:
            raise TokenLifetimeTooLong()
        return jti
