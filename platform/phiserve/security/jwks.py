"""JSON Web Key Sets: the public keys that bearer tokens are verified against.

A key set comes from a file (dev keys, or keys mounted from a Secret) or from the IdP's
``jwks_uri``. Lookups are dict reads; a refresh (re-reading the file or fetching the URL) happens
when a token names an unknown ``kid`` or the set is older than ``max_age_s``, and never more often
than ``min_refresh_interval_s`` so a flood of tokens with random key ids cannot turn this service
into a DoS amplifier against the IdP. A failed refresh keeps the keys that were already loaded.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from phiserve.errors import ConfigurationError

log = logging.getLogger(__name__)

# Algorithms a key of each type (and EC curve) may verify: a key never verifies a token whose
# header claims another family, whatever the JWK's own ``alg`` says.
_FAMILY: Final = {"RSA": ("RS256", "RS384", "RS512"), "OKP": ("EdDSA",)}
_EC_CURVE_ALG: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_MIN_RSA_BITS: Final = 2048
_MAX_JWKS_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key from a JWKS and the algorithms it may verify."""

    kid: str | None
    key: Any  # a cryptography public key object
    algorithms: frozenset[str]


def parse_jwks(document: Mapping[str, Any], *, source: str) -> dict[str | None, VerificationKey]:
    """Public signing keys of a JWKS document, by ``kid``; unusable keys are skipped and logged.

    Skipped: symmetric (``oct``) keys, keys for encryption (``use`` other than ``sig``), private
    key material (a JWKS must never hold it), RSA keys under 2048 bits, unsupported types.
    """
    raw_keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(raw_keys, list):
        raise ValueError("a JWKS document needs a 'keys' list")
    keys: dict[str | None, VerificationKey] = {}
    for index, jwk in enumerate(raw_keys):
        label = f"{source} key #{index}"
        if not isinstance(jwk, dict):
            log.warning("%s skipped: not an object", label)
            continue
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            log.warning("%s skipped: kid is not a string", label)
            continue
        kty = jwk.get("kty")
        if jwk.get("use", "sig") != "sig":
            continue
        if kty == "oct":
            # A shared secret in a JWKS is the HS256 key-confusion set-up: never accept it.
            log.warning("%s skipped: symmetric keys are never accepted", label)
            continue
        if any(part in jwk for part in ("d", "p", "q", "dp", "dq", "qi")):
            log.warning("%s skipped: holds private key material; publish public keys only", label)
            continue
        if kty == "EC":
            alg = _EC_CURVE_ALG.get(jwk.get("crv", ""))
            allowed = (alg,) if alg else ()
        else:
            allowed = _FAMILY.get(kty, ())
        if jwk.get("alg") is not None:
            allowed = tuple(a for a in allowed if a == jwk["alg"])
        if not allowed:
            log.warning("%s skipped: unsupported key type or algorithm", label)
            continue
        try:
            # PyJWK's messages include the JWK itself; only the class name is logged.
            key = PyJWK(jwk, algorithm=allowed[0]).key
        except (PyJWTError, ValueError, TypeError) as exc:
            log.warning("%s skipped: %s", label, type(exc).__name__)
            continue
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            log.warning("%s skipped: RSA key shorter than %d bits", label, _MIN_RSA_BITS)
            continue
        if kid in keys:
            log.warning("%s skipped: duplicate kid", label)
            continue
        keys[kid] = VerificationKey(kid, key, frozenset(allowed))
    return keys


class KeySet:
    """A cached, rate-limited JWKS; subclasses say where the document comes from."""

    def __init__(
        self,
        *,
        min_refresh_interval_s: float = 10.0,
        max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_age_s = max_age_s
        self._clock = clock
        self._keys: dict[str | None, VerificationKey] = {}
        self._loaded_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()
        # Bumped whenever a refresh drops a key, so token caches can forget what it verified.
        self.generation = 0

    # --- source -------------------------------------------------------------------------------
    def _load(self) -> Mapping[str, Any]:
        """Read or fetch the JWKS document; raise on any failure."""
        raise NotImplementedError

    @property
    def source(self) -> str:
        """Where the keys come from, for messages (a path or a URL, never a secret)."""
        raise NotImplementedError

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
        return self.get(kid) is None or self._clock() - self._loaded_at > self.max_age_s

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the set unless one was attempted within the rate limit; True when it changed.

        Concurrent callers queue on a lock: whoever comes second finds the fresh set and returns
        without a second fetch. Failures are logged and the old keys stay in use.
        """
        with self._lock:
            now = self._clock()
            if not force and now - self._attempted_at < self.min_refresh_interval_s:
                return False
            self._attempted_at = now
            try:
                keys = parse_jwks(self._load(), source=self.source)
            except Exception as exc:
                # The message may quote server output; the class name is enough to act on.
                log.warning("JWKS refresh from %s failed: %s", self.source, type(exc).__name__)
                if force:
                    raise
                return False
            if not keys:
                log.warning("JWKS from %s holds no usable signing key", self.source)
            changed = keys.keys() != self._keys.keys()
            if self._keys.keys() - keys.keys():
                self.generation += 1
            self._keys, self._loaded_at = keys, now
            return changed


class FileKeySet(KeySet):
    """A JWKS read from a local file (re-read on unknown ``kid``, so rotation needs no restart)."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path

    @property
    def source(self) -> str:
        """The file path."""
        return str(self.path)

    def _load(self) -> Mapping[str, Any]:
        with self.path.open("rb") as fh:
            data = fh.read(_MAX_JWKS_BYTES + 1)
        if len(data) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS file is larger than 1 MiB")
        return json.loads(data)


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

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        check_jwks_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class UrlKeySet(KeySet):
    """A JWKS fetched from the IdP's ``jwks_uri`` with a short timeout."""

    def __init__(self, url: str, *, timeout_s: float = 3.0, **kwargs: Any) -> None:
        check_jwks_url(url)
        super().__init__(**kwargs)
        self.url = url
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_HttpsOnlyRedirects)

    @property
    def source(self) -> str:
        """The URL without user info, query or fragment (any of which could carry a credential)."""
        parts = urllib.parse.urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def _load(self) -> Mapping[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            self.url, headers={"Accept": "application/jwk-set+json, application/json"}
        )
        with self._opener.open(request, timeout=self.timeout_s) as response:
            data = response.read(_MAX_JWKS_BYTES + 1)
        if len(data) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS response is larger than 1 MiB")
        return json.loads(data)
