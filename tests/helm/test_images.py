"""The Containerfiles, read statically (tests/image builds and runs the CPU image): the base
image argument, the non-root user, the exec-form command, read-only-root settings, offline
hash-checked installs, steps that can fail, and no environment with both onnxruntime packages."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helm.chart import REPO_ROOT

IMAGES = REPO_ROOT / "images"
KNOWN = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


@dataclass
class Instruction:
    line: int
    keyword: str
    value: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined (a small Dockerfile parser)."""
    out: list[Instruction] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, value = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), value.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling continuation at the end"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions per build stage (global ARGs before the first FROM are left out)."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if not result:
            assert ins.keyword == "ARG", f"{ins.keyword} before the first FROM"
            continue
        result[-1].append(ins)
    return result


@pytest.fixture(params=["cpu", "gpu"])
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


def containerfile(flavour: str) -> Path:
    return IMAGES / f"{flavour}.Containerfile"


def test_parses_with_known_instructions(flavour: str) -> None:
    ins = parse(containerfile(flavour))
    assert ins and ins[0].keyword in {"ARG", "FROM"}
    unknown = [i for i in ins if i.keyword not in KNOWN]
    assert not unknown, unknown


def test_base_image_is_an_argument(flavour: str) -> None:
    """One base for both images and both stages; python:3.11-slim where a registry answers,
    the local Debian base otherwise (tools/image.py passes BASE_IMAGE)."""
    ins = parse(containerfile(flavour))
    args = [i.value for i in ins if i.keyword == "ARG" and i.value.startswith("BASE_IMAGE=")]
    assert args == ["BASE_IMAGE=python:3.11-slim-bookworm"]
    froms = [i.value.split()[0] for i in ins if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    assert "python3.11 -m venv" in " ".join(i.value for i in ins if i.keyword == "RUN")


def test_final_stage_is_non_root_and_read_only_friendly(flavour: str) -> None:
    final = stages(parse(containerfile(flavour)))[-1]
    users = [i.value for i in final if i.keyword == "USER"]
    assert users == ["10001:10001"]
    cmd = [i.value for i in final if i.keyword == "CMD"]
    assert [json.loads(c) for c in cmd] == [["phiserve", "serve"]]  # exec form, no shell
    assert not [i for i in final if i.keyword == "ENTRYPOINT"]  # the helm test runs `python`
    env = " ".join(i.value for i in final if i.keyword == "ENV")
    for needed in (
        "PHISERVE_HOST=0.0.0.0",
        "PHISERVE_HOME=/var/lib/phiserve/home",
        "HOME=/var/lib/phiserve/home",
        "PYTHONDONTWRITEBYTECODE=1",
        "PATH=/opt/phiserve/venv/bin",
    ):
        assert needed in env, needed
    expected = "cuda" if flavour == "gpu" else "cpu"
    assert f"PHISERVE_EXECUTION_PROVIDER={expected}" in env
    runs = " ".join(i.value for i in stages(parse(containerfile(flavour)))[0] if i.keyword == "RUN")
    assert "compileall" in runs  # byte code built in, nothing to write under a read-only root


def test_models_baked_in_by_build_arg(flavour: str) -> None:
    final = stages(parse(containerfile(flavour)))[-1]
    assert any(i.keyword == "ARG" and i.value.startswith("MODEL_REPOSITORY=") for i in final)
    copies = [i.value for i in final if i.keyword == "COPY"]
    assert any("${MODEL_REPOSITORY} /opt/phiserve/models" in c for c in copies)
    default = next(i.value for i in final if i.value.startswith("MODEL_REPOSITORY="))
    assert (REPO_ROOT / default.split("=", 1)[1]).is_dir()


def _installs(ins: list[Instruction]) -> list[tuple[int, str]]:
    return [(i.line, i.value) for i in ins if i.keyword == "RUN" and "pip" in i.value]


def test_every_install_is_offline_and_hash_checked(flavour: str) -> None:
    """Packages come from the host's wheelhouse and match the lock; phiserve's own wheel is
    built on the host from this checkout."""
    for _, value in _installs(stages(parse(containerfile(flavour)))[0]):
        if " install " not in value:
            continue
        assert "--no-index" in value and "--no-deps" in value, value
        if "-r /build/" in value:
            assert "--require-hashes" in value and "--only-binary :all:" in value, value
        else:
            assert re.search(r"/build/app/phiserve-\*\.whl$", value), value


def test_every_step_can_fail_the_build(flavour: str) -> None:
    """No step swallows a failure: no `|| true`, `|| :`, `; true`, `set +e`, `exit 0`."""
    for ins in parse(containerfile(flavour)):
        if ins.keyword == "RUN":
            assert not re.search(r"\|\|\s*(true|:)|;\s*true\b|set \+e|exit 0", ins.value), ins


def test_cpu_image_never_installs_onnxruntime_gpu() -> None:
    text = " ".join(v for _, v in _installs(parse(containerfile("cpu"))))
    assert "onnxruntime-gpu" not in text and "gpu.lock" not in text


def test_gpu_image_has_only_onnxruntime_gpu() -> None:
    """requirements.lock brings onnxruntime: it is uninstalled before gpu.lock's
    onnxruntime-gpu goes in (never after: both own the onnxruntime/ package folder), then the
    build proves that the CUDA provider library loads its CUDA and cuDNN libraries."""
    build = stages(parse(containerfile("gpu")))[0]
    line_of = {}
    for n, v in _installs(build):
        if "-r /build/requirements.lock" in v:
            line_of["lock"] = n
        if re.search(r"uninstall -y onnxruntime(\s|$)", v):
            line_of["uninstall"] = n
        if "-r /build/gpu.lock" in v:
            line_of["gpu"] = n
    check = [i.line for i in build if i.keyword == "RUN" and "check_cuda_provider.py" in i.value]
    assert set(line_of) == {"lock", "uninstall", "gpu"} and check, line_of
    assert line_of["lock"] < line_of["uninstall"] < line_of["gpu"] < check[0]
    final = stages(parse(containerfile("gpu")))[-1]
    assert not _installs(final), "the runtime stage installs nothing with pip"
    assert "ldconfig" in " ".join(i.value for i in final if i.keyword == "RUN")


def test_ignore_files_let_exactly_the_copied_sources_through(flavour: str) -> None:
    """Each COPY from the build context is allowed by that Containerfile's ignore file."""
    lines = (IMAGES / f"{flavour}.Containerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert lines[lines.index("*") + 1 :]  # everything excluded, then exceptions
    copies = [i.value.split() for i in parse(containerfile(flavour)) if i.keyword == "COPY"]
    sources = {
        src.rstrip("/")
        for words in copies
        if not any(w.startswith("--from") for w in words)
        for src in [w for w in words if not w.startswith("--")][:-1]
        if not src.startswith("$")
    }
    assert sources <= allowed, sources - allowed
    assert {"images/empty-repository", "build/repository"} <= allowed  # MODEL_REPOSITORY


def test_images_readme_documents_build_scan_sign_push() -> None:
    text = (IMAGES / "README.md").read_text()
    for needed in ("MODEL_REPOSITORY", "make image", "make image-gpu", "make lock", "Mounted",
                   "Baked in", "SBOM", "cosign", "push", "BASE_IMAGE"):  # fmt: skip
        assert needed in text, needed
