"""The images' lock: in step with pyproject.toml, complete, hash-pinned; the GPU lock agrees.

Fast (no engine, no network): a change to pyproject.toml's run-time dependencies without
`make lock` fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tools.image import (
    GPU_LOCK,
    LOCK,
    inputs_digest,
    lock_digest,
    locked_versions,
    normalise,
    pyproject,
    runtime_requirements,
)

# The image's interpreter (tools/image.py's target) for evaluating markers.
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython"}  # fmt: skip


def hashes(lock: Path) -> dict[str, int]:
    """name -> number of --hash options of its pin."""
    counts: dict[str, int] = {}
    name = ""
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==", line)
        if m:
            name = normalise(m.group(1))
            counts[name] = 0
        elif "--hash=sha256:" in line:
            counts[name] += 1
    return counts


def test_lock_records_todays_dependencies() -> None:
    assert lock_digest(LOCK) == inputs_digest(runtime_requirements()), (
        "pyproject.toml's run-time dependencies changed: run `make lock`"
    )
    assert lock_digest(GPU_LOCK) == lock_digest(LOCK), "run `make lock` (the GPU lock is older)"


def test_a_new_dependency_changes_the_digest() -> None:
    project = pyproject()
    project["project"]["dependencies"] = [*project["project"]["dependencies"], "pydicom>=3"]
    assert inputs_digest(runtime_requirements(project)) != lock_digest(LOCK)


@pytest.mark.parametrize("requirement", runtime_requirements(), ids=str)
def test_every_requirement_is_pinned_to_a_satisfying_version(requirement: str) -> None:
    req = Requirement(requirement)
    if req.marker and not req.marker.evaluate(TARGET):
        pytest.skip(f"{requirement}: not for the image's platform")
    pins = locked_versions(LOCK)
    name = normalise(req.name)
    assert name in pins, f"{req.name} is not in {LOCK.name}: run `make lock`"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"{req.name}=={pins[name]} does not satisfy {req.specifier}: run `make lock`"
    )


@pytest.mark.parametrize("lock", [LOCK, GPU_LOCK], ids=lambda p: p.name)
def test_every_pin_has_hashes(lock: Path) -> None:
    counts = hashes(lock)
    assert counts and counts.keys() == locked_versions(lock).keys()
    assert not [n for n, c in counts.items() if c == 0], "pins without --hash"


def test_gpu_lock_swaps_onnxruntime_and_shares_the_other_pins() -> None:
    cpu, gpu = locked_versions(LOCK), locked_versions(GPU_LOCK)
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert any(n.startswith("nvidia-cudnn") for n in gpu), "cuDNN wheels missing"
    shared = cpu.keys() & gpu.keys()
    assert shared and {n: cpu[n] for n in shared} == {n: gpu[n] for n in shared}
