"""The ``vault-transit`` key provider: data keys wrapped by a HashiCorp Vault transit key.

KEK material never leaves Vault: ``wrap`` is ``POST <mount>/encrypt/<key>`` of the base64 data key
and ``unwrap`` is ``POST <mount>/decrypt/<key>``. Vault's ciphertext (``vault:v<N>:...``) is the
wrapped blob; the key id is ``vault-transit:<mount>/<key>:v<N>``, so every wrapped key records
the transit key *version* that made it.

Context. The caller's ``context`` is always sent (canonical JSON, base64). Vault uses it only for
a *derived* transit key (``derived=true``: a per-context key is derived with HKDF), where a
wrapped key then unwraps only with the same context; this is the recommended setup, and a key
that Vault creates on first encrypt with a context is derived. A non-derived key ignores the
context; binding then rests on the payload's AES-GCM associated data, which already covers the
model name, version and digest. Sending it unconditionally needs no ``read`` permission to
detect the key type and works unchanged when a key is recreated derived.

Rotation. :meth:`VaultTransitKeyProvider.rotate` creates a new key version (new wraps use it);
old versions still decrypt until :meth:`VaultTransitKeyProvider.retire_others` raises the key's
``min_decryption_version`` to the latest version. That is reversible (lower it again) unlike
``trim``, which we never call. :meth:`VaultTransitKeyProvider.rewrap` re-wraps server-side with
``<mount>/rewrap/<key>`` so the data key does not leave Vault.

hvac is an optional dependency (``pip install 'phiserve[vault]'``), imported only when this
provider is built.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from phiserve.crypto.base import WrappedKey
from phiserve.crypto.local import context_aad
from phiserve.errors import ConfigurationError, IntegrityError, KeyProviderError, PhiserveError

if TYPE_CHECKING:
    from phiserve.config import Settings

log = logging.getLogger(__name__)

KEY_ID_PREFIX = "vault-transit:"
_CIPHERTEXT = re.compile(r"^vault:v(\d+):")
_KEY_ID = re.compile(r"^vault-transit:(?P<mount>.+)/(?P<key>[^/]+):v(?P<version>\d+)$")

# Vault's 400 answers that mean "this ciphertext does not authenticate or is not a ciphertext".
_INTEGRITY_MARKERS = (
    "message authentication failed",
    "invalid ciphertext",
    "could not decode",
    "unable to decode",
    "failed to decode",
)
# Vault's answer when the ciphertext's version is below min_decryption_version.
_RETIRED_MARKER = "disallowed by policy"


def _import_hvac() -> Any:
    """The hvac module, or a ConfigurationError that says how to install it."""
    try:
        import hvac
    except ImportError:
        raise ConfigurationError(
            "key provider 'vault-transit' needs hvac, which is not installed; "
            "install it with: pip install 'phiserve[vault]'"
        ) from None
    return hvac


def format_key_id(mount: str, key: str, version: int) -> str:
    """``vault-transit:<mount>/<key>:v<N>``, the key id recorded in a :class:`WrappedKey`."""
    return f"{KEY_ID_PREFIX}{mount}/{key}:v{version}"


def parse_key_id(key_id: str) -> tuple[str, str, int]:
    """Mount, key name and version of a key id made by :func:`format_key_id`."""
    match = _KEY_ID.match(key_id)
    if match is None:
        raise KeyProviderError(
            f"key id {key_id!r} is not a Vault transit key id; "
            "was this data key wrapped by another key provider?"
        )
    return match["mount"], match["key"], int(match["version"])


def ciphertext_version(ciphertext: str) -> int | None:
    """The key version in a ``vault:v<N>:`` ciphertext, or None if it has no such prefix."""
    match = _CIPHERTEXT.match(ciphertext)
    return int(match.group(1)) if match else None


class VaultTransitKeyProvider:
    """Wraps data keys with one Vault transit key (type ``aes256-gcm96`` recommended)."""

    name = "vault-transit"

    def __init__(
        self,
        addr: str,
        token: SecretStr | str | None,
        *,
        mount: str = "transit",
        key: str = "phiserve",
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 5.0,
        verify: bool | str = True,
        namespace: str | None = None,
        client: Any | None = None,
    ) -> None:
        """Build a provider for transit key ``key`` at ``mount`` on the Vault at ``addr``.

        ``token`` may be None: hvac then reads ``VAULT_TOKEN`` (or ``~/.vault-token``). Timeouts
        are short and hvac does not retry, so an unreachable Vault fails in seconds. ``verify``
        is passed to requests (False, True or a CA bundle path); ``namespace`` is a Vault
        Enterprise namespace. ``client`` injects a ready ``hvac.Client``.
        """
        if not addr:
            raise ConfigurationError("key provider 'vault-transit' needs a Vault address")
        mount, key = mount.strip("/"), key.strip("/")
        if not mount or not key or "/" in key:
            raise ConfigurationError(
                f"invalid Vault transit mount {mount!r} or key name {key!r} (a key has no '/')"
            )
        self.addr = addr.rstrip("/")
        self.mount = mount
        self.key = key
        url = urlsplit(self.addr)
        if url.scheme == "http" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
            # Data keys travel in these requests; plain HTTP is only acceptable on loopback or
            # inside an encrypted service mesh.
            log.warning(
                "vault-transit: %s is plain HTTP; data keys cross the network unencrypted",
                self.addr,
            )
        if client is None:
            hvac = _import_hvac()
            raw_token = token.get_secret_value() if isinstance(token, SecretStr) else token
            client = hvac.Client(
                url=self.addr,
                token=raw_token,
                timeout=(connect_timeout_s, read_timeout_s),
                verify=verify,
                namespace=namespace or None,
            )
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings, purpose: str = "models") -> VaultTransitKeyProvider:
        """Build from ``vault_addr``, ``vault_token``, ``vault_transit_mount`` and
        ``vault_transit_key`` (or ``vault_audit_transit_key`` for the audit trail), with an
        optional CA bundle (``vault_ca_cert``) and namespace (``vault_namespace``).
        """
        ca_cert = settings.vault_ca_cert
        key = settings.vault_transit_key
        if purpose == "audit" and settings.vault_audit_transit_key:
            key = settings.vault_audit_transit_key
        return cls(
            settings.vault_addr or "",
            settings.vault_token,
            mount=settings.vault_transit_mount,
            key=key,
            verify=str(ca_cert) if ca_cert else True,
            namespace=settings.vault_namespace,
        )

    def __repr__(self) -> str:
        # Never the token.
        return f"VaultTransitKeyProvider(addr={self.addr!r}, key={self.mount}/{self.key})"

    @property
    def key_ref(self) -> str:
        """``<mount>/<key>`` of the transit key that new data keys are wrapped under."""
        return f"{self.mount}/{self.key}"

    # --- the KeyProvider protocol ----------------------------------------------------------------
    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt ``data_key`` under the latest version of the transit key."""
        response = self._call(
            "encrypt",
            self.key_ref,
            lambda transit: transit.encrypt_data(
                name=self.key,
                plaintext=base64.b64encode(data_key).decode(),
                context=_b64_context(context),
                mount_point=self.mount,
            ),
        )
        return self._wrapped(self.mount, self.key, _ciphertext_of(response, self.key_ref))

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Decrypt a data key with the transit key named in ``wrapped.key_id``."""
        mount, key, ciphertext = _checked(wrapped)
        response = self._call(
            "decrypt",
            wrapped.key_id,
            lambda transit: transit.decrypt_data(
                name=key,
                ciphertext=ciphertext,
                context=_b64_context(context),
                mount_point=mount,
            ),
        )
        try:
            return base64.b64decode(response["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise KeyProviderError(
                f"Vault decrypt with key {wrapped.key_id} returned an unexpected answer"
            ) from None

    def rotate(self) -> str:
        """Create a new version of the transit key and return its key id."""
        response = self._call(
            "rotate",
            self.key_ref,
            lambda transit: transit.rotate_key(name=self.key, mount_point=self.mount),
        )
        # Vault 1.14+ answers with the key's description; older versions answer 204.
        latest = _latest_version(response)
        if latest is None:
            latest = self._latest_version()
        return format_key_id(self.mount, self.key, latest)

    def retire_others(self) -> None:
        """Raise ``min_decryption_version`` to the latest version: older versions stop working."""
        latest = self._latest_version()
        self._call(
            "config",
            self.key_ref,
            lambda transit: transit.update_key_configuration(
                name=self.key, min_decryption_version=latest, mount_point=self.mount
            ),
        )

    # --- beyond the protocol ---------------------------------------------------------------------
    def rewrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> WrappedKey:
        """Re-wrap under the latest key version; server-side when the transit key is the same."""
        mount, key, ciphertext = _checked(wrapped)
        if (mount, key) != (self.mount, self.key):
            # Vault rewraps only within one key; moving between keys needs the data key once.
            return self.wrap(self.unwrap(wrapped, context), context)
        response = self._call(
            "rewrap",
            wrapped.key_id,
            lambda transit: transit.rewrap_data(
                name=key, ciphertext=ciphertext, context=_b64_context(context), mount_point=mount
            ),
        )
        return self._wrapped(mount, key, _ciphertext_of(response, wrapped.key_id))

    def check(self) -> str:
        """Check that the transit key exists and can encrypt; return the current key id."""
        data = self._read_key()
        if not data.get("supports_encryption", True):
            raise KeyProviderError(f"Vault transit key {self.key_ref} cannot encrypt")
        if not data.get("derived", False):
            log.info(
                "vault-transit: key %s is not derived; context binding rests on the AAD",
                self.key_ref,
            )
        return format_key_id(self.mount, self.key, int(data["latest_version"]))

    # --- helpers ---------------------------------------------------------------------------------
    def _wrapped(self, mount: str, key: str, ciphertext: str) -> WrappedKey:
        version = ciphertext_version(ciphertext)
        if version is None:
            raise KeyProviderError(
                f"Vault transit key {mount}/{key} returned an unexpected ciphertext"
            )
        return WrappedKey(
            key_id=format_key_id(mount, key, version), blob=ciphertext.encode("ascii")
        )

    def _read_key(self) -> dict[str, Any]:
        response = self._call(
            "read key",
            self.key_ref,
            lambda transit: transit.read_key(name=self.key, mount_point=self.mount),
        )
        try:
            return dict(response["data"])
        except (KeyError, TypeError):
            raise KeyProviderError(
                f"Vault read of key {self.key_ref} returned an unexpected answer"
            ) from None

    def _latest_version(self) -> int:
        latest = _latest_version(self._read_key(), nested=False)
        if latest is None:
            raise KeyProviderError(f"Vault key {self.key_ref} has no latest_version")
        return latest

    def _call(self, action: str, key_id: str, request: Callable[[Any], Any]) -> Any:
        """Run one transit request, turning every failure into a typed phiserve error."""
        import requests

        hvac = _import_hvac()
        try:
            return request(self._client.secrets.transit)
        except hvac.exceptions.VaultError as exc:
            raise self._from_vault_error(exc, action, key_id) from None
        except requests.exceptions.RequestException as exc:
            cause = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "unreachable"
            raise KeyProviderError(
                f"Vault {action} with key {key_id} failed: Vault at {self.addr} {cause} "
                f"({type(exc).__name__})"
            ) from None

    def _from_vault_error(self, exc: Any, action: str, key_id: str) -> PhiserveError:
        hvac = _import_hvac()
        detail = self._safe_detail(exc)
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            cause = "permission denied (check the token and its policy)"
        elif isinstance(exc, hvac.exceptions.InvalidPath):
            cause = f"not found (is a transit engine mounted at '{self.mount}'?)"
        elif isinstance(exc, hvac.exceptions.InvalidRequest):
            lowered = detail.lower()
            if _RETIRED_MARKER in lowered:
                return KeyProviderError(
                    f"Vault refused {action} with key {key_id}: that key version was retired "
                    f"(below min_decryption_version)"
                )
            if action in ("decrypt", "rewrap") and any(m in lowered for m in _INTEGRITY_MARKERS):
                return IntegrityError(
                    f"data key does not unwrap under Vault key {key_id} "
                    f"(wrong key, different context or tampering: {detail})"
                )
            cause = f"bad request: {detail}"
        else:
            # VaultDown (sealed or standby), 5xx, rate limiting, an unexpected status.
            cause = f"Vault unavailable ({type(exc).__name__}: {detail})"
        return KeyProviderError(f"Vault {action} with key {key_id} failed: {cause}")

    def _safe_detail(self, exc: Any) -> str:
        """Vault's error text, shortened; the token is masked should it ever appear."""
        errors = getattr(exc, "errors", None) or []
        text = (
            "; ".join(str(e).strip() for e in errors) if isinstance(errors, list) else str(errors)
        )
        token = getattr(self._client, "token", None)
        if isinstance(token, str) and token:
            text = text.replace(token, "***")
        return " ".join(text.split())[:200] or "no details"


def _b64_context(context: Mapping[str, str]) -> str | None:
    """Vault's ``context`` parameter: base64 of the canonical JSON, or None when empty."""
    return base64.b64encode(context_aad(context)).decode() if context else None


def _checked(wrapped: WrappedKey) -> tuple[str, str, str]:
    """Mount, key and ciphertext of a wrapped key whose key id and blob agree on the version."""
    mount, key, version = parse_key_id(wrapped.key_id)
    try:
        ciphertext = wrapped.blob.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(
            f"wrapped key under Vault key {wrapped.key_id} is not a Vault ciphertext"
        ) from None
    if ciphertext_version(ciphertext) != version:
        raise IntegrityError(
            f"wrapped key under Vault key {wrapped.key_id} does not match its key id "
            "(tampered or swapped)"
        )
    return mount, key, ciphertext


def _ciphertext_of(response: Any, key_id: str) -> str:
    try:
        return str(response["data"]["ciphertext"])
    except (KeyError, TypeError):
        raise KeyProviderError(f"Vault answer for key {key_id} has no ciphertext") from None


def _latest_version(response: Any, *, nested: bool = True) -> int | None:
    """``latest_version`` from a key description (``{"data": {...}}`` when ``nested``)."""
    try:
        data = response["data"] if nested else response
        return int(data["latest_version"])
    except (KeyError, TypeError, ValueError):
        return None
