"""Helpers for the chart tests: the tools in .tools/bin, rendering once per values file, and
walking the rendered manifests.

The tools come from ``make tools`` (tools/install-tools.sh). Without them a test skips saying
so, or fails under CI (``CI`` set), as the Terraform tests do.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "phiserve"
EXAMPLES = CHART / "examples"
TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
RELEASE = "phiserve"
NAMESPACE = "phiserve"
K8S_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")

# Profile name -> values files (relative to the chart), the acceptance set of the issue.
PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "gpu": ("examples/gpu.yaml",),
    "cpu": ("examples/cpu.yaml",),
    "production": ("examples/production.yaml",),
}
# Custom resources without a schema in kubernetes-validate (checked structurally instead).
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def missing_tool(message: str) -> None:
    """Skip (or fail under CI) for a tool that ``make tools`` installs."""
    message += ": run `make tools`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """Path of .tools/bin/<name>, or skip/fail."""
    path = TOOLS_BIN / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing_tool(f"{path.relative_to(REPO_ROOT)} is missing")
    return str(path)


def tool_env() -> dict[str, str]:
    """Environment for helm/checkov: .tools/bin first on PATH, no user helm config."""
    env = dict(os.environ)
    env["PATH"] = f"{TOOLS_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], *, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=kw.pop("env", tool_env()),
        cwd=kw.pop("cwd", REPO_ROOT),
        check=False,
        **kw,
    )


def helm_template(
    *values_files: str | Path, sets: tuple[str, ...] = (), helm: str = "helm3"
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart as release phiserve in namespace phiserve."""
    cmd = [tool(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        cmd += ["-f", str(f if Path(f).is_absolute() else CHART / f)]
    for s in sets:
        cmd += ["--set", s]
    return run(cmd)


def parse(manifests: str) -> list[dict[str, Any]]:
    """Non-empty YAML documents of a render."""
    return [d for d in yaml.safe_load_all(manifests) if d]


@functools.cache
def render_profile(profile: str) -> str:
    """The manifests of one profile (rendered once per test session)."""
    proc = helm_template(*PROFILES[profile])
    assert proc.returncode == 0, f"helm template ({profile}) failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def render_with(*sets: str, files: tuple[str, ...] = ()) -> str:
    proc = helm_template(*files, sets=sets)
    assert proc.returncode == 0, f"helm template {files} {sets} failed:\n{proc.stderr}"
    return proc.stdout


def docs(profile: str) -> list[dict[str, Any]]:
    return parse(render_profile(profile))


def find(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        d
        for d in manifests
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def kinds(manifests: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in manifests}


def pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every workload and bare pod in a render."""
    for d in manifests:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def tool_or_venv(name: str) -> str:
    """A console script of the main venv (kubernetes-validate), or skip/fail."""
    path = REPO_ROOT / ".venv" / "bin" / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        missing_tool(f"{name} is not installed (.venv or PATH)")
    return str(found)
