"""Envelope encryption: AES-256-GCM under a fresh data key, the data key wrapped by a KEK."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phiserve.crypto.base import KeyProvider, WrappedKey
from phiserve.errors import IntegrityError

ALGORITHM = "AES-256-GCM"
_NONCE_BYTES = 12
_TAG_BYTES = 16


@dataclass(frozen=True)
class EnvelopeHeader:
    """What is needed, besides the KEK, to decrypt one sealed payload."""

    wrapped: WrappedKey
    nonce: bytes
    algorithm: str = ALGORITHM

    def to_json(self) -> dict[str, str]:
        """Serialise for a manifest or segment file."""
        return {
            "algorithm": self.algorithm,
            **self.wrapped.to_json(),
            "nonce": base64.b64encode(self.nonce).decode(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> EnvelopeHeader:
        """Inverse of :meth:`to_json`; refuses unknown algorithms."""
        if data.get("algorithm") != ALGORITHM:
            raise IntegrityError(
                f"unsupported encryption algorithm {str(data.get('algorithm'))[:32]!r}"
            )
        try:
            header = cls(
                wrapped=WrappedKey.from_json(data),
                nonce=base64.b64decode(data["nonce"], validate=True),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise IntegrityError(f"encryption header is malformed ({type(exc).__name__})") from None
        if len(header.nonce) != _NONCE_BYTES:
            raise IntegrityError("encryption header nonce is not 12 bytes")
        return header


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def seal_with_key(
    data_key: bytes, wrapped: WrappedKey, plaintext: bytes, aad: bytes
) -> tuple[EnvelopeHeader, bytes]:
    """Encrypt ``plaintext`` under an already-wrapped ``data_key`` with a fresh nonce."""
    nonce = os.urandom(_NONCE_BYTES)
    return EnvelopeHeader(wrapped, nonce), AESGCM(data_key).encrypt(nonce, plaintext, aad)


def seal(
    provider: KeyProvider, plaintext: bytes, aad: bytes, context: Mapping[str, str]
) -> tuple[EnvelopeHeader, bytes, bytes]:
    """Encrypt under a fresh data key; returns header, ciphertext and the data key (for MACs)."""
    data_key = new_data_key()
    header, ciphertext = seal_with_key(data_key, provider.wrap(data_key, context), plaintext, aad)
    return header, ciphertext, data_key


def open_with_key(
    data_key: bytes, header: EnvelopeHeader, ciphertext: bytes | memoryview | mmap.mmap, aad: bytes
) -> bytes:
    """Decrypt and authenticate; a wrong key, wrong AAD or any flipped bit raises.

    ``ciphertext`` (ciphertext then 16-byte tag, as :func:`seal_with_key` writes it) may be any
    bytes-like object: the model loader passes an ``mmap`` of the file, which ``AESGCM.decrypt``
    reads in place. The plaintext exists only once the tag verifies.
    """
    with memoryview(ciphertext) as view:
        if view.nbytes < _TAG_BYTES:
            raise IntegrityError("ciphertext is shorter than its authentication tag")
        try:
            return AESGCM(data_key).decrypt(header.nonce, view, aad)
        except (InvalidTag, ValueError):  # ValueError: a nonce or key of the wrong length
            raise IntegrityError(
                "ciphertext failed authentication (tampered, swapped or wrong key)"
            ) from None


def derive_key(data_key: bytes, purpose: str) -> bytes:
    """A sub-key of ``data_key`` for one purpose (HMAC-SHA256 as a KDF, one block)."""
    return hmac.new(data_key, b"phiserve:" + purpose.encode(), hashlib.sha256).digest()
