"""``phiserve audit verify|export|pseudonym``: check the trail, export it, find a patient in it.

``verify`` exits 0 with a summary when every stream, segment and record checks out, and 1 naming
the first broken record otherwise. ``export`` decrypts records to JSON lines on stdout.
``pseudonym KIND`` reads one identifier from standard input (never the command line, which shell
history and process lists keep) and prints the pseudonym that records about it carry. Both are
audited first (stream ``cli``), and refused if that record cannot be made durable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from phiserve.audit.record import AuditEvent, parse_iso, utc_iso
from phiserve.audit.verify import TrailReport, verify_trail
from phiserve.audit.writer import AuditWriter
from phiserve.config import Settings, load_settings
from phiserve.crypto import key_provider_from_settings
from phiserve.errors import ConfigurationError

EXPORT_ROUTE = "cli:audit export"
PSEUDONYM_ROUTE = "cli:audit pseudonym"
CLI_STREAM = "cli"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``phiserve audit verify`` and ``phiserve audit export``."""
    audit = subparsers.add_parser("audit", help="verify or export the audit trail")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    verify = sub.add_parser("verify", help="check every segment and the whole HMAC chain")
    verify.add_argument("dir", nargs="?", type=Path, help="audit folder (default: settings)")
    verify.add_argument(
        "--sealed", action="store_true", help="also refuse an unsealed final segment (archives)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser("export", help="decrypt records to JSON lines (this is audited)")
    export.add_argument("dir", nargs="?", type=Path, help="audit folder (default: settings)")
    export.add_argument("--since", type=parse_iso, help="ISO time, inclusive")
    export.add_argument("--until", type=parse_iso, help="ISO time, exclusive")
    export.add_argument("--actor", help="who exports (default: $USER)")
    export.set_defaults(func=cmd_export)

    lookup = sub.add_parser(
        "pseudonym", help="the pseudonym of an identifier read from stdin (this is audited)"
    )
    lookup.add_argument("kind", help="patient, encounter, instance, ...")
    lookup.add_argument("dir", nargs="?", type=Path, help="audit folder (default: settings)")
    lookup.add_argument("--actor", help="who looks it up (default: $USER)")
    lookup.set_defaults(func=cmd_pseudonym)


def _audit_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return args.dir if args.dir is not None else settings.audit_path


def _summary(report: TrailReport) -> dict[str, Any]:
    return {
        "directory": str(report.directory),
        "ok": report.ok,
        "records": report.records,
        "streams": [
            {
                "name": s.name,
                "segments": s.segments,
                "records": s.records,
                "last_seq": s.last_seq,
                "recovered_seals": s.recovered_seals,
                "open_tail": s.open_tail,
                "first_time": s.first_time,
                "last_time": s.last_time,
            }
            for s in report.streams
        ],
        "problem": None if report.problem is None else str(report.problem),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the trail; exit 0 if intact, 1 at the first broken record."""
    settings = load_settings()
    directory = _audit_dir(args, settings)
    if not directory.is_dir():
        raise ConfigurationError(f"audit folder {directory} does not exist")
    report = verify_trail(directory, key_provider_from_settings(settings, purpose="audit"),
                          require_sealed=args.sealed)  # fmt: skip
    if args.json:
        print(json.dumps(_summary(report), indent=2))
    else:
        for s in report.streams:
            state = "open tail" if s.open_tail else "sealed"
            recovered = (
                f", {s.recovered_seals} recovered after a crash" if s.recovered_seals else ""
            )
            print(f"stream {s.name}: {s.segments} segments, {s.records} records "
                  f"(seq 1..{s.last_seq}), {state}{recovered}")  # fmt: skip
        if report.ok:
            print(f"OK: {report.records} records in {len(report.streams)} streams verified")
        else:
            print(f"FAILED: {report.problem}", file=sys.stderr)
    return 0 if report.ok else 1


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return args.actor
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def cmd_export(args: argparse.Namespace) -> int:
    """Audit the export, then write the trail's records in the window as JSON lines."""
    settings = load_settings()
    directory = _audit_dir(args, settings)
    if not directory.is_dir():
        raise ConfigurationError(f"audit folder {directory} does not exist")
    provider = key_provider_from_settings(settings, purpose="audit")
    # The export is recorded (durably) before a single record leaves the trail.
    _audited(settings, directory, _actor(args), EXPORT_ROUTE).close()

    out = sys.stdout
    exported = 0

    def emit(stream: str, record: dict[str, Any]) -> None:
        nonlocal exported
        when = parse_iso(record["time"])
        if (args.since and when < args.since) or (args.until and when >= args.until):
            return
        line = {"stream": stream, **{k: v for k, v in record.items() if k != "kind"}}
        out.write(json.dumps(line, sort_keys=False) + "\n")
        exported += 1

    report = verify_trail(directory, provider, on_record=emit)
    out.flush()
    if not report.ok:
        print(f"export stopped: {report.problem}", file=sys.stderr)
        return 1
    print(f"exported {exported} records", file=sys.stderr)
    return 0


def cmd_pseudonym(args: argparse.Namespace) -> int:
    """Audit the lookup, then print the pseudonym of the identifier on stdin."""
    settings = load_settings()
    directory = _audit_dir(args, settings)
    if not directory.is_dir():
        raise ConfigurationError(f"audit folder {directory} does not exist")
    identifier = sys.stdin.readline().strip()
    if not identifier:
        raise ConfigurationError("give the identifier on standard input")
    writer = _audited(settings, directory, _actor(args), PSEUDONYM_ROUTE)
    try:
        print(writer.pseudonym(args.kind, identifier))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    finally:
        writer.close()
    return 0


def _audited(settings: Settings, directory: Path, actor: str, route: str) -> AuditWriter:
    """A started writer on the ``cli`` stream that has durably recorded ``route`` by ``actor``."""
    provider = key_provider_from_settings(settings, purpose="audit")
    writer = AuditWriter(directory, provider, stream=CLI_STREAM,
                         segment_max_bytes=settings.audit_segment_max_bytes,
                         segment_max_age_s=settings.audit_segment_max_age_s)  # fmt: skip
    writer.start()
    try:
        writer.append_sync(_cli_event(actor, route))
    except BaseException:
        writer.close()
        raise
    return writer


def _cli_event(actor: str, route: str) -> AuditEvent:
    return AuditEvent(
        time=utc_iso(time.time()),
        request_id=uuid.uuid4().hex,
        trace_id=None,
        subject=actor,
        client=socket.gethostname()[:64] or "local",
        method="CLI",
        route=route,
        model=None,
        version=None,
        outcome="ok",
        status=200,
        latency_ms=0.0,
        break_glass=False,
        body_hmac=None,
    )
