"""Envelope encryption and key providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from phiserve.crypto.base import KeyProvider, WrappedKey

if TYPE_CHECKING:
    from phiserve.config import Settings

__all__ = ["KeyProvider", "WrappedKey", "key_provider_from_settings"]


def key_provider_from_settings(
    settings: Settings, *, create: bool = False, purpose: Literal["models", "audit"] = "models"
) -> KeyProvider:
    """Build the configured key provider; ``create`` makes a local key file if none exists.

    ``purpose`` picks the KEK: with KMS or Vault the audit trail may use its own key (the
    serving role only decrypts models, but it must encrypt audit segments).
    """
    if settings.key_provider == "aws-kms":
        from phiserve.crypto.aws_kms import AwsKmsKeyProvider

        return AwsKmsKeyProvider.from_settings(settings, purpose)
    if settings.key_provider == "vault-transit":
        from phiserve.crypto.vault_transit import VaultTransitKeyProvider

        return VaultTransitKeyProvider.from_settings(settings, purpose)
    from phiserve.crypto.local import LocalKeyProvider

    return LocalKeyProvider(settings.kek_file, create=create)
