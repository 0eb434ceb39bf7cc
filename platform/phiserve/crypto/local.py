"""The ``local`` key provider: KEKs in a JSON key file, for development and single-node use.

The file is created 0600 (its folder 0700) on first use and refused when group or others can
read it, as ssh does with private keys.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phiserve.crypto.base import WrappedKey
from phiserve.errors import IntegrityError, KeyProviderError


def context_aad(context: Mapping[str, str]) -> bytes:
    """Canonical bytes of an encryption context, used as associated data."""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


class LocalKeyProvider:
    """KEKs held in a local key file."""

    name = "local"

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        if create and not path.exists():
            self._keys: dict[str, bytes] = {}
            self.rotate()  # writes the file, 0600, with its first KEK
        self._keys, self._current = self._read()

    def _read(self) -> tuple[dict[str, bytes], str]:
        try:
            mode = self.path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyProviderError(
                    f"key file {self.path} is readable by group or others "
                    f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {self.path}"
                )
            data = json.loads(self.path.read_text())
            keys = {kid: base64.b64decode(k, validate=True) for kid, k in data["keys"].items()}
            current = data["current"]
            if current not in keys or any(len(k) != 32 for k in keys.values()):
                raise ValueError("current key missing or a key is not 256 bits")
        except FileNotFoundError:
            raise KeyProviderError(
                f"key file {self.path} not found; run 'phiserve keys init'"
            ) from None
        except PermissionError:
            raise KeyProviderError(
                f"key file {self.path} is not readable (permission denied)"
            ) from None
        except OSError as exc:  # a folder in its place, an I/O error, ...
            raise KeyProviderError(
                f"key file {self.path} cannot be read ({type(exc).__name__})"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyProviderError(
                f"key file {self.path} is malformed: {type(exc).__name__}"
            ) from None
        return keys, current

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a stale temp file could carry a wider mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _save(self) -> None:
        keys = {kid: base64.b64encode(k).decode() for kid, k in self._keys.items()}
        self._write({"current": self._current, "keys": keys})

    @property
    def current_key_id(self) -> str:
        """Id of the KEK that new data keys are wrapped under."""
        return self._current

    def wrap(self, data_key: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Encrypt ``data_key`` under the current KEK, bound to ``context``."""
        nonce = os.urandom(12)
        blob = nonce + AESGCM(self._keys[self._current]).encrypt(
            nonce, data_key, context_aad(context)
        )
        return WrappedKey(key_id=self._current, blob=blob)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Decrypt a data key; a missing KEK or a failed tag raises a typed error."""
        kek = self._keys.get(wrapped.key_id)
        if kek is None:
            raise KeyProviderError(f"KEK {wrapped.key_id!r} is not in key file {self.path}")
        try:
            return AESGCM(kek).decrypt(wrapped.blob[:12], wrapped.blob[12:], context_aad(context))
        except InvalidTag:
            raise IntegrityError(
                f"data key does not unwrap under KEK {wrapped.key_id!r} (wrong key or tampering)"
            ) from None

    def rotate(self) -> str:
        """Add a new current KEK; older ones stay until :meth:`retire_others`."""
        kid = f"local-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"
        self._keys[kid] = AESGCM.generate_key(bit_length=256)
        self._current = kid
        self._save()
        return kid

    def retire_others(self) -> None:
        """Drop every KEK but the current one from the key file."""
        self._keys = {self._current: self._keys[self._current]}
        self._save()
