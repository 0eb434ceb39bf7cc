"""``phiserve dev init``: everything a fresh machine needs before ``phiserve serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from phiserve.cli.export import export_toolchain
from phiserve.config import load_settings
from phiserve.crypto import key_provider_from_settings
from phiserve.repository.store import ModelRepository


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dev init``."""
    parser = sub.add_parser("dev", help="local development set-up")
    dev = parser.add_subparsers(dest="dev_command", required=True)
    init = dev.add_parser("init", help="dev KEK, token signing key, example models (idempotent)")
    init.add_argument("--source", type=Path, default=Path("models"))
    init.set_defaults(func=init_cmd)


def init_cmd(args: argparse.Namespace) -> int:
    """Create what is missing; leave what exists alone."""
    from phiserve.security.devkeys import ensure_dev_keys

    build_models = export_toolchain()
    settings = load_settings()
    provider = key_provider_from_settings(settings, create=True)
    ensure_dev_keys(settings)
    repo = ModelRepository(settings.repository_dir)
    for m in build_models(repo, provider, args.source, only_missing=True):
        print(f"published {m.name} version {m.version}")
    print(f"ready: {len(list(repo.entries()))} model versions under {settings.repository_dir}")
    return 0
