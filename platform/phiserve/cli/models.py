"""``phiserve models``: build, list and verify the encrypted model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from phiserve.cli.export import export_toolchain
from phiserve.config import load_settings
from phiserve.crypto import key_provider_from_settings
from phiserve.errors import IntegrityError, PhiserveError
from phiserve.repository.card import render_markdown
from phiserve.repository.manifest import Manifest
from phiserve.repository.store import ModelRepository


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models build|list|verify``."""
    parser = sub.add_parser("models", help="the encrypted model repository")
    models = parser.add_subparsers(dest="models_command", required=True)
    build = models.add_parser("build", help="export, encrypt and publish example models")
    build.add_argument("names", nargs="*", help="model folders under --source (default: all)")
    build.add_argument("--source", type=Path, default=Path("models"))
    build.set_defaults(func=build_cmd)
    models.add_parser("list", help="models, versions and digests").set_defaults(func=list_cmd)
    verify = models.add_parser("verify", help="decrypt in memory and check every version")
    verify.set_defaults(func=verify_cmd)


def build_cmd(args: argparse.Namespace) -> int:
    """Publish a new version of each selected model."""
    build_models = export_toolchain()
    settings = load_settings()
    provider = key_provider_from_settings(settings, create=True)
    repo = ModelRepository(settings.repository_dir)
    for m in build_models(repo, provider, args.source, args.names):
        print(f"published {m.name} version {m.version} sha256 {m.sha256[:16]}…")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    """Print one line per model version (from manifests; nothing is decrypted)."""
    repo = ModelRepository(load_settings().repository_dir)
    for name, version in repo.entries():
        m = repo.read_manifest(name, version)
        shapes = ", ".join(f"{s.name}:{s.datatype}{s.shape}" for s in m.inputs)
        print(f"{name}\t{version}\t{m.sha256[:16]}\t{m.size_bytes} B\t{shapes}\t{m.created}")
    return 0


def verify_cmd(args: argparse.Namespace) -> int:
    """Decrypt each version in memory and check MAC, AAD, digest and the rendered model card;
    exit 1 on any failure."""
    settings = load_settings()
    repo = ModelRepository(settings.repository_dir)
    provider = key_provider_from_settings(settings)
    failed = 0
    entries = list(repo.entries())
    for name, version in entries:
        try:
            artifact = repo.load(name, version, provider)
            _check_card(repo, artifact.manifest)
        except PhiserveError as exc:
            failed += 1
            print(f"FAIL {exc.message}")
        else:
            print(f"ok   {name} version {version} sha256 {artifact.manifest.sha256[:16]}…")
    print(f"{len(entries) - failed} of {len(entries)} versions verified")
    return 1 if failed or not entries else 0


def _check_card(repo: ModelRepository, manifest: Manifest) -> None:
    """MODEL_CARD.md is what people read: it must be the authenticated card, rendered."""
    path = repo.card_path(manifest.name, manifest.version)
    where = f"model {manifest.name!r} version {manifest.version}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{where}: {path.name} unreadable ({type(exc).__name__})") from None
    if text != render_markdown(manifest.card):
        raise IntegrityError(
            f"{where}: {path.name} differs from the card in the authenticated manifest "
            "(edited after publishing: restore the published file)"
        )
