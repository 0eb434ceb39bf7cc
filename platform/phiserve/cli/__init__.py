"""The ``phiserve`` command line: one sub-command module per concern.

Each module in this package exposes ``register(subparsers)``, which adds its commands; a command
stores its handler as ``func`` and returns a process exit code. Typed errors print one line
(never a stack trace) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from phiserve.errors import PhiserveError

# Sub-command modules, in the order ``phiserve --help`` lists them.
_MODULES = ("serve", "dev", "models", "keys", "token", "audit")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(prog="phiserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _MODULES:
        importlib.import_module(f"phiserve.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``phiserve`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PhiserveError as exc:
        print(f"phiserve: error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
