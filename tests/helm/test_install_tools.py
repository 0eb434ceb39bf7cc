"""tools/install-tools.sh: pinned, idempotent, fast when installed, clear when npm is missing."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time

import pytest

from tests.helm.chart import REPO_ROOT, TOOLS_BIN, tool

SCRIPT = REPO_ROOT / "tools" / "install-tools.sh"
TEXT = SCRIPT.read_text()


def _pinned(name: str) -> str:
    m = re.search(rf'^{name}_SHA256="([0-9a-f]{{64}})"$', TEXT, re.M)
    assert m, f"{name}_SHA256 not pinned in {SCRIPT.name}"
    return m.group(1)


@pytest.mark.parametrize("name", ["HELM3", "HELM4"])
def test_installed_helm_matches_the_pinned_hash(name: str) -> None:
    path = tool(name.lower())
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()  # noqa: SIM115
    assert digest == _pinned(name)


def test_helm_symlink_and_checkov_wrapper() -> None:
    tool("helm3")
    assert os.readlink(TOOLS_BIN / "helm") == "helm3"
    checkov = tool("checkov")
    assert (REPO_ROOT / ".venv-checkov" / "bin" / "checkov").is_file()
    proc = subprocess.run([checkov, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and re.match(r"\d+\.\d+\.\d+", proc.stdout.strip())


def test_second_run_is_fast_and_idempotent() -> None:
    tool("helm4")
    tool("checkov")
    started = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "installing" not in proc.stdout, proc.stdout
    assert elapsed < 20, f"an installed tool set took {elapsed:.1f}s"


def test_clear_error_without_npm(tmp_path) -> None:
    """With an empty tools folder and no npm, the script says what to install."""
    fake_root = tmp_path / "repo"
    (fake_root / "tools").mkdir(parents=True)
    (fake_root / "tools" / "install-tools.sh").write_text(TEXT)
    proc = subprocess.run(
        ["bash", str(fake_root / "tools" / "install-tools.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "NPM": "no-such-npm"},
    )
    assert proc.returncode != 0
    assert "npm is needed" in proc.stderr
    assert not (fake_root / ".tools" / "bin" / "helm3").exists()


def test_the_script_fetches_nothing_by_url() -> None:
    # Packages come by name through npm and pip, as configured on the machine: no URLs at all.
    assert "http://" not in TEXT
    assert "https://" not in TEXT
    assert "curl " not in TEXT
    assert "wget " not in TEXT
