"""The Containerfiles (no engine can build them here): parse them, check the base images, the
non-root user, the exec-form command, read-only-root settings, and that no environment gets
both onnxruntime packages."""

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


def test_base_images(flavour: str) -> None:
    ins = parse(containerfile(flavour))
    args = {
        i.value.split("=", 1)[0]: i.value.split("=", 1)[1]
        for i in ins
        if i.keyword == "ARG" and "=" in i.value
    }
    if flavour == "cpu":
        assert re.match(r"python:3\.11-slim", args["PYTHON_IMAGE"])
    else:
        assert re.match(r"nvidia/cuda:12\.[0-9.]+-cudnn-runtime-", args["CUDA_IMAGE"])
        assert "python3.11" in " ".join(i.value for i in ins if i.keyword == "RUN")


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


def test_cpu_image_never_installs_onnxruntime_gpu() -> None:
    text = " ".join(v for _, v in _installs(parse(containerfile("cpu"))))
    assert "onnxruntime-gpu" not in text


def test_gpu_image_has_only_onnxruntime_gpu() -> None:
    """phiserve pulls onnxruntime; it must be uninstalled before onnxruntime-gpu goes in (never
    after: both own the onnxruntime/ package folder), and the build checks the CUDA provider."""
    build = stages(parse(containerfile("gpu")))[0]
    runs = _installs(build)
    line_of = {}
    for n, v in runs:
        if re.search(r"pip install .*/src", v):
            line_of["app"] = n
        if re.search(r"pip uninstall -y onnxruntime(\s|$)", v):
            line_of["uninstall"] = n
        if re.search(r"pip install .*onnxruntime-gpu", v):
            line_of["gpu"] = n
    assert set(line_of) == {"app", "uninstall", "gpu"}, runs
    assert line_of["app"] < line_of["uninstall"] < line_of["gpu"]
    after = [v for n, v in runs if n > line_of["gpu"]]
    assert not any(re.search(r"pip install .*onnxruntime(?!-gpu)", v) for v in after)
    check = " ".join(i.value for i in build if i.keyword == "RUN")
    assert "CUDAExecutionProvider" in check
    final = stages(parse(containerfile("gpu")))[-1]
    assert not _installs(final), "the runtime stage installs nothing with pip"


def test_ignore_files_match_and_let_the_sources_through() -> None:
    cpu = (IMAGES / "cpu.Containerfile.dockerignore").read_text()
    assert cpu == (IMAGES / "gpu.Containerfile.dockerignore").read_text()
    lines = cpu.splitlines()
    assert lines[lines.index("*") + 1 :]  # everything excluded, then exceptions
    for needed in ("!pyproject.toml", "!platform/", "!images/empty-repository/"):
        assert needed in lines


def test_images_readme_documents_both_model_options() -> None:
    text = (IMAGES / "README.md").read_text()
    for needed in ("MODEL_REPOSITORY", "podman build", "docker build", "Mounted", "Baked in"):
        assert needed in text
