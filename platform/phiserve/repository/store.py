"""The encrypted model repository: ``<root>/<model>/<version>/{manifest.json, model.onnx.enc}``.

This is the serving side: listing, reading manifests, decrypting in memory (bytes for the
runtime, nothing plaintext on disk) and re-wrapping data keys. Every check that can fail names the
model, the version and the cause. Publishing (export time) lives in
:mod:`phiserve.repository.publish`, so the server never imports ONNX or export code.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from phiserve.crypto.base import KeyProvider
from phiserve.crypto.envelope import EnvelopeHeader, open_with_key
from phiserve.errors import IntegrityError, KeyProviderError, ModelLoadError, NotFound
from phiserve.repository.manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    Manifest,
    artifact_aad,
    key_context,
)


@dataclass(frozen=True)
class LoadedArtifact:
    """A verified manifest and the plaintext ONNX bytes, in memory only."""

    manifest: Manifest
    onnx_bytes: bytes


class ModelRepository:
    """A Triton-style repository of encrypted, versioned ONNX models."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- listing ---------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of models that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isascii()
            and p.name.isdigit()
            and int(p.name) > 0
            and (p / MANIFEST_FILE).is_file()
        )

    def entries(self) -> Iterator[tuple[str, int]]:
        """Every (model, version) in the repository."""
        for name in self.models():
            for version in self.versions(name):
                yield name, version

    def card_path(self, name: str, version: int) -> Path:
        """``MODEL_CARD.md`` of a version: rendered from its manifest's card when published."""
        return self.root / name / str(version) / CARD_FILE

    def read_manifest(self, name: str, version: int) -> Manifest:
        """The manifest as stored, not yet authenticated."""
        path = self.root / name / str(version) / MANIFEST_FILE
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise NotFound(
                f"model {name!r} version {version} not found in the repository"
            ) from None
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
            raise ModelLoadError(
                f"model {name!r} version {version}: manifest is invalid (fields: {', '.join(fields)})"
            ) from None

    # --- loading ---------------------------------------------------------------------------
    def load(
        self, name: str, version: int, provider: KeyProvider, *, check_digest: bool = True
    ) -> LoadedArtifact:
        """Decrypt and verify one version in memory; every failure names model, version, cause.

        ``check_digest=False`` skips re-hashing the plaintext: the GCM tag already binds it to
        the manifest's digest (in the associated data) under a key only the KEK unwraps. The
        server loads that way; ``phiserve models verify`` checks the digest as well.
        """
        where = f"model {name!r} version {version}"
        manifest = self.read_manifest(name, version)
        try:
            # The path, not the manifest, names what we expect: a moved folder fails here.
            if (manifest.name, manifest.version) != (name, version):
                raise IntegrityError(
                    f"manifest names {manifest.name!r} version {manifest.version} (moved or swapped)"
                )
            header = EnvelopeHeader.from_json(manifest.encryption)
            data_key = provider.unwrap(header.wrapped, key_context(name, version))
            if not manifest.mac_ok(data_key):
                raise IntegrityError("manifest authentication failed (manifest or card edited)")
            path = self.root / name / str(version) / manifest.artifact
            aad = artifact_aad(name, version, manifest.sha256)
            try:
                # Decrypted straight from the page cache: no copy of the ciphertext in memory.
                with (
                    open(path, "rb") as fh,
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view,
                ):
                    # Read in one pass: a wider read-ahead when the file is not cached (cold
                    # start of 100 MiB: 58 -> 45 ms here).
                    view.madvise(mmap.MADV_SEQUENTIAL)
                    plaintext = open_with_key(data_key, header, view, aad)
            except FileNotFoundError:
                raise IntegrityError(f"artifact {manifest.artifact} is missing") from None
            except PermissionError:
                raise IntegrityError(f"artifact {manifest.artifact} is not readable") from None
            except ValueError:  # mmap of an empty file
                raise IntegrityError(f"artifact {manifest.artifact} is empty") from None
            if check_digest and hashlib.sha256(plaintext).hexdigest() != manifest.sha256:
                raise IntegrityError("artifact digest does not match the manifest")
        except KeyProviderError as exc:
            raise KeyProviderError(f"{where}: {exc.message}") from None
        except IntegrityError as exc:
            raise ModelLoadError(f"{where} refused: {exc.message}") from None
        return LoadedArtifact(manifest=manifest, onnx_bytes=plaintext)

    # --- key rotation ----------------------------------------------------------------------
    def rewrap(self, provider: KeyProvider) -> int:
        """Re-wrap every data key under the provider's current KEK; payloads stay untouched.

        Returns how many versions were re-wrapped. Each manifest is replaced atomically, so an
        interrupted rotation leaves every version readable under one of the two KEKs.
        """
        count = 0
        for name, version in self.entries():
            manifest = self.read_manifest(name, version)
            header = EnvelopeHeader.from_json(manifest.encryption)
            context = key_context(name, version)
            data_key = provider.unwrap(header.wrapped, context)
            if not manifest.mac_ok(data_key):
                raise ModelLoadError(
                    f"model {name!r} version {version}: manifest edited; not re-wrapped"
                )
            new_header = EnvelopeHeader(provider.wrap(data_key, context), header.nonce)
            updated = manifest.model_copy(update={"encryption": new_header.to_json()}).signed(
                data_key
            )
            write_file(self.root / name / str(version) / MANIFEST_FILE, updated.to_json().encode())
            count += 1
        return count


def write_file(path: Path, data: bytes) -> None:
    """Write atomically and durably: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
