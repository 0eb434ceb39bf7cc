"""``phiserve token``: the dev signing key and short-lived dev tokens.

    phiserve token init
    phiserve token issue --subject alice --scope "infer:breast-cancer metadata:read" [--ttl 900]

``issue`` prints only the token on stdout, so ``TOKEN=$(phiserve token issue ...)`` works.
"""

from __future__ import annotations

import argparse
import sys

from phiserve.config import load_settings
from phiserve.security.devkeys import DEFAULT_TTL_S, MAX_TTL_S, ensure_dev_keys, issue_token


def _init(args: argparse.Namespace) -> int:
    settings = load_settings()
    ensure_dev_keys(settings)
    print(f"dev signing key: {settings.signing_key_file}", file=sys.stderr)
    print(f"JWKS:            {settings.jwks_path}", file=sys.stderr)
    if settings.jwks_url:
        print(
            "note: PHISERVE_JWKS_URL is set, so the server verifies against the IdP, "
            "not this JWKS; dev tokens will be refused",
            file=sys.stderr,
        )
    return 0


def _issue(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(issue_token(settings, args.subject, args.scope or [], ttl_s=args.ttl))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``token init`` and ``token issue``."""
    parser = subparsers.add_parser("token", help="dev signing key and short-lived dev tokens")
    sub = parser.add_subparsers(dest="token_command", required=True)

    init = sub.add_parser("init", help="create the dev signing key and its JWKS (idempotent)")
    init.set_defaults(func=_init)

    issue = sub.add_parser("issue", help="print a signed dev token")
    issue.add_argument("--subject", required=True, help="the caller's identity (sub claim)")
    issue.add_argument(
        "--scope",
        action="append",
        metavar="SCOPES",
        help='space-separated scopes, repeatable, e.g. "infer:breast-cancer metadata:read"',
    )
    issue.add_argument(
        "--ttl",
        type=int,
        default=DEFAULT_TTL_S,
        help=f"lifetime in seconds (default {DEFAULT_TTL_S}, at most {MAX_TTL_S})",
    )
    issue.set_defaults(func=_issue)
