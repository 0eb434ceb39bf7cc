"""Envelope encryption and key providers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from phiserve.crypto.base import KeyProvider, WrappedKey

if TYPE_CHECKING:
    from phiserve.config import Settings

__all__ = ["KeyProvider", "WrappedKey", "key_provider_from_settings"]


def key_provider_from_settings(settings: Settings, *, create: bool = False) -> KeyProvider:
    """Build the configured key provider; ``create`` makes a local key file if none exists."""
    if settings.key_provider == "aws-kms":
        from phiserve.crypto.aws_kms import AwsKmsKeyProvider

        return AwsKmsKeyProvider.from_settings(settings)
    if settings.key_provider == "vault-transit":
        from phiserve.crypto.vault_transit import VaultTransitKeyProvider

        return VaultTransitKeyProvider.from_settings(settings)
    from phiserve.crypto.local import LocalKeyProvider

    return LocalKeyProvider(settings.kek_file, create=create)
