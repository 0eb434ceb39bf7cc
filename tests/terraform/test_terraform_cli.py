"""terraform fmt, init (offline, from the local provider mirror) + validate, and a mocked plan.

Everything runs on a copy of terraform/ in a temporary directory, so no .terraform folder or
lock file lands in the repository. Where terraform or the provider mirror is missing, the tests
skip and say so.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.terraform.tfhelpers import (
    MODULE_NAMES,
    REPO_ROOT,
    TF_ROOT,
    copy_terraform_tree,
    plugin_dir_or_skip,
    terraform_env,
    terraform_or_skip,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOTS = ["environments/example", *(f"modules/{m}" for m in MODULE_NAMES)]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 180):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tf_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of terraform/ shared by the validate and plan tests."""
    return copy_terraform_tree(tmp_path_factory.mktemp("tf"))


def test_fmt_check_recursive(tmp_path: Path) -> None:
    terraform = terraform_or_skip()
    proc = run(
        [terraform, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_ROOT)],
        REPO_ROOT,
        terraform_env(tmp_path),
    )
    assert proc.returncode == 0, f"terraform fmt would change files:\n{proc.stdout}{proc.stderr}"
    proc = run(
        [terraform, "fmt", "-check", "-diff", "-no-color", str(FIXTURES)],
        REPO_ROOT,
        terraform_env(tmp_path),
    )
    assert proc.returncode == 0, f"terraform fmt would change the fixtures:\n{proc.stdout}"


def _init(terraform: str, workdir: Path, env: dict[str, str]) -> None:
    plugins = plugin_dir_or_skip()
    proc = run(
        [
            terraform,
            "init",
            "-backend=false",
            f"-plugin-dir={plugins}",
            "-input=false",
            "-no-color",
        ],
        workdir,
        env,
    )
    assert proc.returncode == 0, f"terraform init failed in {workdir}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("root", ROOTS)
def test_init_and_validate(root: str, tf_copy: Path, tmp_path: Path) -> None:
    terraform = terraform_or_skip()
    workdir = tf_copy / root
    env = terraform_env(tmp_path)
    _init(terraform, workdir, env)
    proc = run([terraform, "validate", "-no-color"], workdir, env)
    assert proc.returncode == 0, (
        f"terraform validate failed for {root}:\n{proc.stdout}{proc.stderr}"
    )
    assert "Success" in proc.stdout
    assert not (TF_ROOT / root / ".terraform").exists(), "init must not run inside the repository"


def test_example_plans_with_mocked_aws(tf_copy: Path, tmp_path: Path) -> None:
    """`terraform test` with a mocked AWS provider: the whole example plans (no dependency
    cycle between the modules, variable validations pass with the defaults) and the GPU
    taint and labels come out of the plan as the chart expects."""
    terraform = terraform_or_skip()
    env = terraform_env(tmp_path)
    version = run([terraform, "version"], tf_copy, env).stdout
    m = re.search(r"Terraform v(\d+)\.(\d+)", version)
    if not m or (int(m.group(1)), int(m.group(2))) < (1, 7):
        pytest.skip(f"terraform test with mock_provider needs Terraform >= 1.7, found: {version!r}")
    workdir = tf_copy / "environments" / "example"
    tests_dir = workdir / "tests"
    tests_dir.mkdir(exist_ok=True)
    (tests_dir / "plan.tftest.hcl").write_text(
        (FIXTURES / "example_plan.tftest.hcl").read_text(encoding="utf-8")
    )
    # init after the test file is in place: it installs the modules its runs call.
    _init(terraform, workdir, env)
    proc = run([terraform, "test", "-no-color"], workdir, env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"terraform test (mocked plan) failed:\n{output}"
    assert re.search(r"Success! [1-9]\d* passed, 0 failed", output), output
