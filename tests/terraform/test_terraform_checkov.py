"""checkov on terraform/: zero failed checks; every skip carries a written reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.terraform.tfhelpers import REPO_ROOT, terraform_env

MIN_REASON_CHARS = 40


def find_checkov() -> str:
    local = REPO_ROOT / ".tools" / "bin" / "checkov"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("checkov")
    if on_path:
        return on_path
    message = "checkov not found (.tools/bin/checkov or PATH): run `make tools` to install it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _reports(stdout: str) -> list[dict[str, Any]]:
    start = min((i for i in (stdout.find("{"), stdout.find("[")) if i >= 0), default=-1)
    assert start >= 0, f"checkov printed no JSON:\n{stdout[:2000]}"
    data = json.loads(stdout[start:])
    reports = data if isinstance(data, list) else [data]
    return [r for r in reports if r.get("check_type") == "terraform"]


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkov = find_checkov()
    env = terraform_env(tmp_path_factory.mktemp("checkov"))
    proc = subprocess.run(
        [
            checkov,
            "-d",
            "terraform",
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # checkov exits 1 when a check fails; anything else is a crash.
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    reports = _reports(proc.stdout)
    assert reports, "checkov produced no terraform report: it scanned nothing"
    return reports[0]


def test_checkov_scanned_something(checkov_report: dict[str, Any]) -> None:
    summary = checkov_report["summary"]
    assert summary["passed"] > 0, f"checkov passed no check, it scanned nothing: {summary}"
    assert summary["resource_count"] > 0, summary
    assert summary["parsing_errors"] == 0, checkov_report["results"].get("parsing_errors")


def test_checkov_zero_failed(checkov_report: dict[str, Any]) -> None:
    failed = checkov_report["results"].get("failed_checks", [])
    lines = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']}:"
        f"{c['file_line_range'][0]})"
        for c in failed
    ]
    assert checkov_report["summary"]["failed"] == 0, "checkov failures:\n" + "\n".join(lines)


def test_checkov_skips_have_reasons(checkov_report: dict[str, Any]) -> None:
    skipped = checkov_report["results"].get("skipped_checks", [])
    assert len(skipped) == checkov_report["summary"]["skipped"]
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= MIN_REASON_CHARS, (
            f"{c['check_id']} on {c['resource']} is skipped without a real reason: {reason!r}"
        )


def test_checkov_skips_are_in_code_not_on_the_command_line() -> None:
    """Skips live next to the resource they excuse (#checkov:skip=ID:reason), never as a
    blanket --skip-check in a config file that would hide new failures."""
    for cfg in (REPO_ROOT / ".checkov.yaml", REPO_ROOT / ".checkov.yml"):
        if cfg.exists():
            assert "skip-check" not in cfg.read_text(encoding="utf-8"), cfg
    for tf in (REPO_ROOT / "terraform").rglob("*.tf"):
        for n, line in enumerate(tf.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip=" in line:
                _, _, rest = line.partition("checkov:skip=")
                check_id, _, reason = rest.partition(":")
                assert check_id.startswith("CKV"), f"{tf}:{n}: malformed skip {line.strip()!r}"
                assert len(reason.strip()) >= MIN_REASON_CHARS, f"{tf}:{n}: skip without reason"


def test_missing_checkov_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tests.terraform.test_terraform_checkov as mod

    monkeypatch.setattr(mod, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="make tools"):
        mod.find_checkov()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make tools"):
        mod.find_checkov()
