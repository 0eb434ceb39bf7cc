"""The key-provider interface: wrap and unwrap data keys under a key-encryption key (KEK).

Raw KEK material never leaves a cloud provider; only 32-byte data keys travel through ``wrap``
and ``unwrap``. Everything phiserve encrypts (model artifacts, the audit key, audit segments) is
sealed under its own data key, so rotating the KEK only re-wraps data keys.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under a KEK, with the id of that KEK."""

    key_id: str
    blob: bytes

    def to_json(self) -> dict[str, str]:
        """Serialise for a manifest or segment header."""
        return {"key_id": self.key_id, "wrapped_key": base64.b64encode(self.blob).decode()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> WrappedKey:
        """Inverse of :meth:`to_json`."""
        return cls(key_id=data["key_id"], blob=base64.b64decode(data["wrapped_key"], validate=True))


class KeyProvider(Protocol):
    """Wraps and unwraps data keys. Implementations raise :class:`KeyProviderError` when the
    provider cannot be reached or has no such key, and :class:`IntegrityError` when a wrapped key
    does not authenticate (wrong KEK or tampering)."""

    name: str

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt ``data_key`` under the current KEK, bound to ``context``."""
        ...

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Decrypt a data key wrapped by :meth:`wrap` with the same ``context``."""
        ...

    def rotate(self) -> str:
        """Make a new KEK current and return its id; old KEKs still unwrap until retired."""
        ...

    def retire_others(self) -> None:
        """Forget every KEK but the current one (after all data keys were re-wrapped)."""
        ...
