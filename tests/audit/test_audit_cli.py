"""``phiserve audit verify|export|pseudonym``: exit codes, summaries, time windows, an audited export."""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit import fsio
from phiserve.audit.record import utc_iso
from phiserve.audit.writer import AuditWriter
from phiserve.cli import audit as audit_cli
from phiserve.errors import AuditUnavailable, ConfigurationError
from tests.audit.conftest import FlakyProvider, make_event
from tests.audit.helpers import frames_of, read_trail, segment_paths, write_frames


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kek_file: Path, audit_dir: Path) -> Path:
    """Settings for in-process CLI calls: local KEK and audit folder of this test."""
    for key in list(os.environ):
        if key.startswith("PHISERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PHISERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PHISERVE_LOCAL_KEK_FILE", str(kek_file))
    monkeypatch.setenv("PHISERVE_AUDIT_DIR", str(audit_dir))
    monkeypatch.setenv("USER", "auditor-anna")
    return audit_dir


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="phiserve")
    audit_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *argv])
    return int(args.func(args))


@pytest.fixture
def trail(env: Path, writer_factory: Callable[..., AuditWriter]) -> Path:
    """A closed trail with records at three known times."""
    writer = writer_factory(segment_max_bytes=12 * 1024)
    for i, when in enumerate(["2025-01-01T10:00:00", "2025-01-02T10:00:00", "2025-01-03T10:00:00"]):
        for j in range(4):
            stamp = time.mktime(time.strptime(when, "%Y-%m-%dT%H:%M:%S")) - time.timezone
            writer.append_sync(make_event(time=utc_iso(stamp), request_id=f"d{i}-{j}"))
    writer.close()
    return env


def test_verify_ok_prints_a_summary(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("verify") == 0
    out = capsys.readouterr().out
    assert "stream server:" in out and "12 records" in out and "OK: 12 records" in out


def test_verify_json(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("verify", str(trail), "--json", "--sealed") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["records"] == 12 and report["problem"] is None


def test_verify_reports_the_first_broken_record(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = segment_paths(trail)[1]
    head, frames = frames_of(path)
    frames[0], frames[1] = frames[1], frames[0]
    write_frames(path, head, frames)
    assert run("verify", str(trail)) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED: stream server, segment 2, frame 0, record seq ")
    assert "reordered" in err


def test_verify_missing_folder_is_an_error(env: Path) -> None:
    with pytest.raises(ConfigurationError):
        run("verify", str(env / "nope"))


def test_export_window_and_the_export_is_audited(
    trail: Path, capsys: pytest.CaptureFixture[str], provider: FlakyProvider
) -> None:
    assert run("export", "--since", "2025-01-02T00:00:00Z", "--until", "2025-01-03T00:00:00Z") == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [x["request_id"] for x in lines] == [f"d1-{j}" for j in range(4)]
    assert all(x["stream"] == "server" and "mac" in x and "kind" not in x for x in lines)
    assert "exported 4 records" in captured.err

    _, stored = read_trail(trail, provider, require_sealed=True)
    (export_record,) = [r for r in stored if r["route"] == "cli:audit export"]
    assert (export_record["subject"], export_record["method"]) == ("auditor-anna", "CLI")
    assert run("export", "--actor", "compliance-bob") == 0
    out = capsys.readouterr().out
    exports = [json.loads(x) for x in out.splitlines() if "cli:audit export" in x]
    assert [x["subject"] for x in exports] == ["auditor-anna", "compliance-bob"]
    assert all(x["stream"] == "cli" for x in exports)
    assert run("verify", "--sealed") == 0


def test_export_refused_when_it_cannot_be_audited(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(fd: int, data: bytes | memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_os_pwrite", enospc)
    with pytest.raises(AuditUnavailable):
        run("export")
    assert capsys.readouterr().out == ""  # not one record left the trail


def test_export_stops_at_a_broken_record(trail: Path, capsys: pytest.CaptureFixture[str]) -> None:
    segment_paths(trail)[0].unlink()
    assert run("export") == 1
    captured = capsys.readouterr()
    assert "export stopped:" in captured.err and "segment 1 missing" in captured.err


def test_pseudonym_lookup_matches_the_server_and_is_audited(
    trail: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    writer_factory: Callable[..., AuditWriter],
    provider: FlakyProvider,
) -> None:
    expected = writer_factory().pseudonym("patient", "MRN-0042")
    monkeypatch.setattr("sys.stdin", io.StringIO("MRN-0042\n"))
    assert run("pseudonym", "patient") == 0
    assert capsys.readouterr().out.strip() == expected
    _, stored = read_trail(trail, provider)
    (lookup,) = [r for r in stored if r["route"] == "cli:audit pseudonym"]
    assert lookup["subject"] == "auditor-anna"
    assert "MRN-0042" not in json.dumps(stored)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ConfigurationError, match="standard input"):
        run("pseudonym", "patient")
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    with pytest.raises(ConfigurationError, match="lowercase"):
        run("pseudonym", "Patient Name")
