"""``phiserve keys``: create and rotate the key-encryption key."""

from __future__ import annotations

import argparse

from phiserve.audit import rewrap as rewrap_audit
from phiserve.config import load_settings
from phiserve.crypto import key_provider_from_settings
from phiserve.repository.store import ModelRepository


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keys init`` and ``keys rotate``."""
    parser = sub.add_parser("keys", help="key-encryption key (KEK) management")
    keys = parser.add_subparsers(dest="keys_command", required=True)
    keys.add_parser("init", help="create the local KEK file if missing").set_defaults(func=init)
    keys.add_parser(
        "rotate",
        help="new KEK; re-wrap every data key; retire the old KEK (run with the server stopped)",
    ).set_defaults(func=rotate)


def init(args: argparse.Namespace) -> int:
    """Create the KEK (local provider) or check that the configured provider answers."""
    settings = load_settings()
    provider = key_provider_from_settings(settings, create=True)
    print(f"key provider {provider.name} ready")
    return 0


def rotate(args: argparse.Namespace) -> int:
    """Rotate the KEK: re-wrap model and audit data keys, then retire the old KEK.

    Run it with the server stopped: a running server would keep wrapping new audit segments
    under the KEK that is being retired.
    """
    settings = load_settings()
    provider = key_provider_from_settings(settings)
    # The provider keeps the old KEK until retire_others(), so it unwraps old and wraps new.
    new_id = provider.rotate()
    models = ModelRepository(settings.repository_dir).rewrap(provider)
    # Built after the rotation so a local key file is read with both KEKs in it.
    audit = rewrap_audit(settings.audit_path, key_provider_from_settings(settings, purpose="audit"))
    provider.retire_others()
    print(f"rotated to KEK {new_id}: re-wrapped {models} model versions and {audit} audit keys")
    return 0
