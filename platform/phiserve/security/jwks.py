"""JSON Web Key Sets: the public keys that bearer tokens are verified against.

PyJWT does the JWKS work: :class:`jwt.PyJWKSet` parses a set into :class:`jwt.PyJWK` keys, and for
an IdP's ``jwks_uri`` a :class:`jwt.PyJWKClient` fetches the set and caches it for ``max_age_s``
(its ``lifespan``). phiserve adds what PyJWT leaves to the application:

- a key policy (:func:`usable_keys`): no symmetric keys, no private key material, RSA of at least
  2048 bits, each key verifying only its own algorithm (its JWK's ``alg``, or PyJWT's default for
  its type: RS256 for RSA, the curve's ES* for EC, EdDSA for OKP) and only if that algorithm
  belongs to its key type and curve, no duplicate ``kid``;
- lookups that are dict reads, and a refresh (re-read the file, re-fetch the URL) when a token
  names an unknown ``kid`` or the set is older than ``max_age_s``, never more often than
  ``min_refresh_interval_s``, so a flood of tokens with random key ids cannot turn this service
  into a DoS amplifier against the IdP (PyJWKClient's own refresh on an unknown ``kid`` is not
  rate-limited before PyJWT 2.14);
- a failed refresh keeps the keys already loaded, and :attr:`KeySet.generation` counts refreshes
  that dropped a key, so the token cache forgets what such a key verified;
- https only, redirects included (plain http only on loopback), and a 1 MiB bound on the set.
  PyJWKClient's own fetch follows redirects to any scheme up to PyJWT 2.13 and none after, and
  reads any size, so :class:`JwksClient` overrides its public ``fetch_data`` and nothing else.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final
from urllib.error import HTTPError

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKSetError

from phiserve.errors import ConfigurationError

log = logging.getLogger(__name__)

_EC_CURVE_ALG: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512"})
_MIN_RSA_BITS: Final = 2048
_MAX_JWKS_BYTES: Final = 1024 * 1024
_PRIVATE_KEYS: Final = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _algorithms_of(key: Any) -> frozenset[str]:
    """The JWS algorithms a public key of this type (and curve) may verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_CURVE_ALG:
        return frozenset({_EC_CURVE_ALG[key.curve.name]})
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return frozenset({"EdDSA"})
    return frozenset()


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A usable key and the algorithms it may verify: the JWK's own ``alg`` when it declares one,
    else every algorithm of its key type and curve (``alg`` is optional in RFC 7517, and an RSA
    key without it signs RS384 for CDS Hooks clients as well as RS256 for IdPs)."""

    jwk: PyJWK
    algorithms: frozenset[str]


def usable_keys(
    jwk_set: PyJWKSet, document: Mapping[str, Any], *, source: str
) -> dict[str | None, VerificationKey]:
    """The keys of a parsed set that may verify tokens, by ``kid``; the others are logged.

    ``document`` is the set as decoded JSON (PyJWK does not say whether ``alg`` was declared).
    Raises :class:`jwt.exceptions.PyJWKSetError` when none is left. Keys that PyJWT itself cannot
    parse never reach here (:class:`jwt.PyJWKSet` drops them).
    """
    raw = document.get("keys")
    declared = {
        k.get("kid"): k["alg"]
        for k in (raw if isinstance(raw, list) else ())
        if isinstance(k, dict) and k.get("alg") is not None
    }
    keys: dict[str | None, VerificationKey] = {}
    for index, jwk in enumerate(jwk_set.keys):  # PyJWKSet iterates only from PyJWT 2.11
        kid = jwk.key_id
        # The kid is the IdP's label, not a secret; repr() keeps odd characters out of the log.
        label = f"{source} key #{index} ({str(kid)[:64]!r})"
        if kid is not None and not isinstance(kid, str):
            log.warning("%s skipped: kid is not a string", label)
        elif jwk.public_key_use not in (None, "sig"):
            continue  # an encryption key: not for us, not a problem
        elif jwk.key_type == "oct":
            # A shared secret in a JWKS is the HS256 key-confusion set-up: never accept it.
            log.warning("%s skipped: symmetric keys are never accepted", label)
        elif isinstance(jwk.key, _PRIVATE_KEYS):
            log.warning("%s skipped: holds private key material; publish public keys only", label)
        elif jwk.algorithm_name not in _algorithms_of(jwk.key):
            log.warning("%s skipped: unsupported key type or algorithm", label)
        elif isinstance(jwk.key, rsa.RSAPublicKey) and jwk.key.key_size < _MIN_RSA_BITS:
            log.warning("%s skipped: RSA key shorter than %d bits", label, _MIN_RSA_BITS)
        elif kid in keys:
            log.warning("%s skipped: duplicate kid", label)
        else:
            algorithms = {declared[kid]} if kid in declared else _algorithms_of(jwk.key)
            keys[kid] = VerificationKey(jwk, frozenset(algorithms))
    if not keys:
        raise PyJWKSetError("the JWK Set holds no usable signing key")
    return keys


def _parse(document: Any) -> PyJWKSet:
    """A :class:`jwt.PyJWKSet` from a decoded JWKS document (which must be a JSON object)."""
    if not isinstance(document, dict):
        raise PyJWKSetError("a JWKS document must be a JSON object")
    return PyJWKSet.from_dict(document)


class KeySet(ABC):
    """Policy-filtered keys by ``kid``, refreshed on demand and at most once per interval."""

    def __init__(
        self, *, min_refresh_interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_refresh_interval_s = min_refresh_interval_s
        self._clock = clock
        self._keys: dict[str | None, VerificationKey] = {}
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()
        # Bumped whenever a refresh drops a key, so token caches can forget what it verified.
        self.generation = 0

    @property
    @abstractmethod
    def source(self) -> str:
        """Where the keys come from, for messages (a path or a URL, never a secret)."""

    @abstractmethod
    def _read(self) -> tuple[PyJWKSet, Mapping[str, Any]]:
        """Read or fetch the set now: parsed, and as decoded JSON; raise on any failure."""

    @abstractmethod
    def _stale(self) -> bool:
        """Whether the set last read is older than its maximum age (or none was read)."""

    # --- lookups ------------------------------------------------------------------------------
    def get(self, kid: str | None) -> VerificationKey | None:
        """The key with this ``kid``; a token without ``kid`` matches only a single-key set."""
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))
        return key

    def __len__(self) -> int:
        return len(self._keys)

    def needs_refresh(self, kid: str | None) -> bool:
        """Whether a lookup of ``kid`` should refresh first (unknown or stale, not rate-limited)."""
        if self._clock() - self._attempted_at < self.min_refresh_interval_s:
            return False
        return self.get(kid) is None or self._stale()

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the set unless one was attempted within the rate limit; True when it changed.

        Concurrent callers queue on a lock: whoever comes second finds the fresh set and returns
        without a second fetch. Failures are logged and the old keys stay in use; with ``force``
        (start-up) they are raised as well.
        """
        with self._lock:
            now = self._clock()
            if not force and now - self._attempted_at < self.min_refresh_interval_s:
                return False
            self._attempted_at = now
            try:
                keys = usable_keys(*self._read(), source=self.source)
            except Exception as exc:
                # The message may quote server output; the class name is enough to act on.
                log.warning("JWKS refresh from %s failed: %s", self.source, type(exc).__name__)
                if force:
                    raise
                return False
            changed = keys.keys() != self._keys.keys()
            if self._keys.keys() - keys.keys():
                self.generation += 1
            self._keys = keys
            return changed


class FileKeySet(KeySet):
    """A JWKS read from a local file (re-read on unknown ``kid``, so rotation needs no restart)."""

    def __init__(self, path: Path, *, max_age_s: float = 3600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.max_age_s = max_age_s
        self._read_at = float("-inf")

    @property
    def source(self) -> str:
        """The file path."""
        return str(self.path)

    def _read(self) -> tuple[PyJWKSet, Mapping[str, Any]]:
        with self.path.open("rb") as fh:
            data = fh.read(_MAX_JWKS_BYTES + 1)
        if len(data) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS file is larger than 1 MiB")
        document = json.loads(data)
        jwk_set = _parse(document)
        self._read_at = self._clock()
        return jwk_set, document

    def _stale(self) -> bool:
        return self._clock() - self._read_at > self.max_age_s


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if host in (None, ""):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str) -> None:
    """Refuse JWKS URLs that would let a network attacker substitute keys (plain http)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return  # a local IdP or a test server on the loopback interface
    raise ConfigurationError("jwks_url must be an https URL (plain http only on loopback)")


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that :func:`check_jwks_url` accepts (no https -> http)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        check_jwks_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class JwksClient(PyJWKClient):
    """PyJWKClient whose fetch follows redirects only to https (or loopback) and reads <= 1 MiB.

    Everything else is PyJWKClient's: the request headers, timeout and TLS context given to its
    constructor, the JWK Set cache and its lifespan, parsing in ``get_jwk_set``.
    """

    def __init__(self, uri: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        # The set as decoded JSON, for the key policy (PyJWK does not say if alg was declared).
        self.last_document: dict[str, Any] = {}

    def fetch_data(self) -> Any:
        """Fetch and decode the set, store it in the JWK Set cache (as PyJWKClient does)."""
        handlers: list[urllib.request.BaseHandler] = [_HttpsOnlyRedirects()]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        request = urllib.request.Request(self.uri, headers=self.headers)  # noqa: S310 - https checked
        try:
            with urllib.request.build_opener(*handlers).open(
                request, timeout=self.timeout
            ) as response:
                data = response.read(_MAX_JWKS_BYTES + 1)
        except HTTPError as exc:
            exc.close()
            raise PyJWKClientConnectionError(f"the JWKS endpoint answered {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PyJWKClientConnectionError(f"JWKS fetch failed: {type(exc).__name__}") from None
        if len(data) > _MAX_JWKS_BYTES:
            raise PyJWKClientError("the JWKS response is larger than 1 MiB")
        document = json.loads(data)
        if not isinstance(document, dict):
            raise PyJWKClientError("the JWKS endpoint did not return a JSON object")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(document)
        self.last_document = document
        return document


class UrlKeySet(KeySet):
    """A JWKS fetched from the IdP's ``jwks_uri`` by a :class:`JwksClient`, short timeout."""

    def __init__(
        self, url: str, *, timeout_s: float = 3.0, max_age_s: float = 3600.0, **kwargs: Any
    ) -> None:
        check_jwks_url(url)
        super().__init__(**kwargs)
        self.url = url
        self.client = JwksClient(
            url,
            lifespan=max_age_s,
            timeout=timeout_s,
            headers={"Accept": "application/jwk-set+json, application/json"},
        )

    @property
    def source(self) -> str:
        """The URL without user info, query or fragment (any of which could carry a credential)."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def _read(self) -> tuple[PyJWKSet, Mapping[str, Any]]:
        # Called only when a fetch is due (unknown kid or stale): bypass the cache's answer.
        jwk_set = self.client.get_jwk_set(refresh=True)
        return jwk_set, self.client.last_document

    def _stale(self) -> bool:
        cache = self.client.jwk_set_cache
        return cache is None or cache.get() is None
