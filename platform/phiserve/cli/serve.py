"""``phiserve serve``: run the BentoML service with settings from the environment."""

from __future__ import annotations

import argparse
import os
import sys

from phiserve.app import build_platform
from phiserve.config import Settings, load_settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command."""
    parser = sub.add_parser("serve", help="serve the model repository over the V2 protocol")
    parser.set_defaults(func=serve)


def serve_command(settings: Settings) -> list[str]:
    """The ``bentoml serve`` command line for ``settings`` (also used by tests and the chart)."""
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "phiserve.service:Phiserve",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--timeout-graceful-shutdown",
        str(int(settings.drain_timeout_s)),
    ]
    if settings.tls_cert_file and settings.tls_key_file:
        cmd += ["--ssl-certfile", str(settings.tls_cert_file)]
        cmd += ["--ssl-keyfile", str(settings.tls_key_file)]
    return cmd


def serve(args: argparse.Namespace) -> int:
    """Replace this process with the BentoML server (so signals reach it directly)."""
    settings = load_settings()
    build_platform(settings)  # fail here, in one line, on settings that cannot serve
    # BentoML keeps its own state under BENTOML_HOME; keep it beside ours, off a read-only root.
    os.environ.setdefault("BENTOML_HOME", str((settings.home / "bentoml").resolve()))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    cmd = serve_command(settings)
    os.execv(cmd[0], cmd)  # noqa: S606 - argv list, no shell
    return 0  # not reached
