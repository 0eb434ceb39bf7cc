"""Build the container images and their dependency lock: ``make image``, ``make image-gpu``,
``make lock``.

    python -m tools.image lock            # images/requirements.lock and images/gpu.lock
    python -m tools.image build cpu|gpu   # base image, wheelhouse, image, SBOM, size report

The image build never reaches a package index: the host downloads a wheelhouse whose every file
matches a hash of the checked-in lock (``pip download --require-hashes``), and the Containerfile
installs from it with ``--no-index --require-hashes`` and the build's network switched off, so
two builds from one commit install the same bytes.

Base image (``BASE_IMAGE``): ``python:3.11-slim-bookworm`` when the engine has it or can pull it;
where no registry answers, a Debian bookworm base built here with debootstrap (as root), cached
under images/build/base (a tarball) and in the engine's storage, so a second build reuses it.

Models baked in (``MODEL_REPOSITORY``): an encrypted repository inside the build context.

Engine (``CONTAINER_ENGINE``): podman, else docker, whichever answers ``info``. podman runs its
containers with runc when it is installed: crun fails on hybrid cgroup v1/v2 hosts.

Stdlib only, so any Python 3.11+ runs it; pip (the running interpreter's) downloads the wheels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "images"
BUILD = IMAGES / "build"
WHEELS = BUILD / "wheels"
LOCK = IMAGES / "requirements.lock"
GPU_LOCK = IMAGES / "gpu.lock"
# The image's interpreter: Debian bookworm's (and python:3.11-slim-bookworm's) CPython 3.11 on
# glibc 2.36, x86_64. Locks and wheelhouses are made for it whatever Python runs this tool.
TARGET_PYTHON = "3.11"
TARGET_GLIBC_MINOR = 36
# Extras of phiserve that the image carries: every key provider the chart can select.
IMAGE_EXTRAS = ("aws", "vault")
# The GPU image swaps onnxruntime for onnxruntime-gpu with CUDA and cuDNN as PyPI wheels.
GPU_RUNTIME = "onnxruntime-gpu[cuda,cudnn]"
REGISTRY_BASE = "python:3.11-slim-bookworm"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3.11", "python3-venv", "ca-certificates")
UV = "uv==0.13.9"
CYCLONEDX = "cyclonedx-bom==7.5.0"
DIGEST_PREFIX = "# inputs-sha256: "
PULL_TIMEOUT_S = 120


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


def say(message: str) -> None:
    print(f"image: {message}", flush=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; its output goes to the terminal."""
    proc = subprocess.run(list(cmd), text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(cmd)}` exited {proc.returncode}")
    return proc


def capture(cmd: Sequence[str], **kw: object) -> str:
    """stdout of a command that must succeed."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise BuildError(
            f"`{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


# --- lock -----------------------------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def runtime_requirements(project: dict | None = None) -> list[str]:
    """What the server needs at run time: the dependencies and the image's extras."""
    meta = (project or pyproject())["project"]
    reqs = list(meta["dependencies"])
    for extra in IMAGE_EXTRAS:
        reqs += meta["optional-dependencies"][extra]
    return reqs


def inputs_digest(requirements: Sequence[str]) -> str:
    """Digest of the lock's inputs, recorded in the lock so that drift is detectable."""
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()


def locked_versions(lock: Path) -> dict[str, str]:
    """name -> pinned version of a lock file (names normalised as in PEP 503)."""
    pins = {}
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[normalise(name.split("[")[0])] = rest.split()[0].rstrip("\\").strip()
    return pins


def normalise(name: str) -> str:
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def uv() -> str:
    """uv from its own tool venv (.tools/uv), installed on first use."""
    venv = REPO_ROOT / ".tools" / "uv"
    exe = venv / "bin" / "uv"
    stamp = venv / ".installed"
    if not (exe.is_file() and stamp.is_file() and stamp.read_text() == UV):
        say(f"installing {UV} into .tools/uv")
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", UV])
        stamp.write_text(UV)
    return str(exe)


def compile_lock(requirements: Sequence[str], out: Path, header: str, *extra: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n")
        run(
            [uv(), "pip", "compile", str(source), "--generate-hashes", "--no-header", "--quiet",
             "--python-version", TARGET_PYTHON, "--python-platform", "x86_64-manylinux_2_28",
             "--custom-compile-command", "make lock", "-o", str(Path(tmp) / "out"), *extra],
            cwd=REPO_ROOT,
        )  # fmt: skip
        body = (Path(tmp) / "out").read_text().replace(str(source), "requirements")
    out.write_text(header + body)


def cmd_lock(_: argparse.Namespace) -> None:
    reqs = runtime_requirements()
    digest = inputs_digest(reqs)
    compile_lock(
        reqs,
        LOCK,
        "# The server's run-time dependencies (pyproject.toml's dependencies and the extras\n"
        f"# {', '.join(IMAGE_EXTRAS)}), pinned with hashes for the images. Regenerate: make lock\n"
        f"{DIGEST_PREFIX}{digest}\n",
    )
    # onnxruntime-gpu is released after onnxruntime: the newest one, not necessarily the same.
    compile_lock(
        [GPU_RUNTIME],
        GPU_LOCK,
        "# The GPU image's swap for onnxruntime: onnxruntime-gpu with CUDA and cuDNN as PyPI\n"
        "# wheels; the packages it shares with requirements.lock are pinned as there.\n"
        f"# Regenerate: make lock\n{DIGEST_PREFIX}{digest}\n",
        "--constraint",
        str(LOCK),
    )
    say(f"wrote {LOCK.relative_to(REPO_ROOT)} ({len(locked_versions(LOCK))} packages) and "
        f"{GPU_LOCK.relative_to(REPO_ROOT)} ({len(locked_versions(GPU_LOCK))} packages)")  # fmt: skip


def lock_digest(lock: Path) -> str:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX) :].strip()
    raise BuildError(f"{lock.name} has no '{DIGEST_PREFIX.strip()}' line: run `make lock`")


def check_lock_current() -> None:
    if lock_digest(LOCK) != inputs_digest(runtime_requirements()):
        raise BuildError(
            "images/requirements.lock is older than pyproject.toml's dependencies: run `make lock`"
        )


# --- engine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """A container engine and the flags this host needs to build and run with it."""

    name: str
    host_flags: tuple[str, ...] = ()

    def cmd(self, *args: str) -> list[str]:
        return [self.name, *args]

    def build_flags(self) -> list[str]:
        """Flags of `build`: the OCI runtime and rlimits this host allows."""
        return list(self.host_flags)

    def run_flags(self) -> list[str]:
        """Flags of `run`: as for builds, no HEALTHCHECK timer (the chart's probes rule), and
        podman's own tmpfs mounts off under --read-only (only the mounts given are writable)."""
        if self.name != "podman":
            return []
        return [*self.host_flags, "--no-healthcheck", "--read-only-tmpfs=false"]

    def has_image(self, ref: str) -> bool:
        proc = subprocess.run(self.cmd("image", "inspect", ref), capture_output=True, check=False)
        return proc.returncode == 0

    def image_info(self, ref: str) -> dict:
        return json.loads(capture(self.cmd("image", "inspect", ref)))[0]


def detect_engine() -> Engine | None:
    """podman or docker, the first that answers; None when neither works here."""
    wanted = os.environ.get("CONTAINER_ENGINE")
    for name in [wanted] if wanted else ["podman", "docker"]:
        if not shutil.which(name):
            continue
        probe = subprocess.run([name, "info"], capture_output=True, check=False, timeout=60)
        if probe.returncode != 0:
            continue
        flags: tuple[str, ...] = ()
        if name == "podman" and shutil.which("runc"):
            # Lower rlimits: raising them is refused in unprivileged sandboxes such as CI's.
            flags = ("--runtime", "runc", "--ulimit", "nofile=4096:4096",
                     "--ulimit", "nproc=4096:4096")  # fmt: skip
        return Engine(name, flags)
    return None


def require_engine() -> Engine:
    engine = detect_engine()
    if engine is None:
        raise BuildError(
            "no container engine answers here: install podman (apt-get install podman buildah "
            "runc) or start docker, or set CONTAINER_ENGINE"
        )
    return engine


# --- base image -----------------------------------------------------------------------------


def base_recipe() -> str:
    return f"debootstrap minbase {DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)} strip-docs-locales v2"


def local_base_ref() -> str:
    tag = hashlib.sha256(base_recipe().encode()).hexdigest()[:12]
    return f"localhost/phiserve-base:{DEBIAN_SUITE}-py{TARGET_PYTHON}-{tag}"


def debootstrap(root: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise BuildError(
            "no registry answers and the local Debian base needs debootstrap as root "
            "(apt-get install debootstrap), or set BASE_IMAGE to an image the engine has"
        )
    mirror = [os.environ["DEBIAN_MIRROR"]] if os.environ.get("DEBIAN_MIRROR") else []
    say(f"building the Debian {DEBIAN_SUITE} base with debootstrap (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
         DEBIAN_SUITE, str(root), *mirror], stdout=subprocess.DEVNULL)  # fmt: skip
    # What the server never reads: package caches, translations, manuals, docs (licences stay).
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "usr/share/man/*",
                    "usr/share/info/*", "usr/share/locale/*", "var/log/*"):  # fmt: skip
        for path in root.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in (root / "usr/share/doc").rglob("*"):
        if path.name != "copyright" and not path.is_dir():
            path.unlink()


def ensure_local_base(engine: Engine) -> str:
    ref = local_base_ref()
    if engine.has_image(ref):
        return ref
    tarball = BUILD / "base" / f"{ref.rsplit(':', 1)[1]}.tar"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tarball.parent) as tmp:
            root = Path(tmp) / "root"
            debootstrap(root)
            partial = tarball.with_suffix(".part")
            run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
            partial.replace(tarball)
    say(f"importing {tarball.relative_to(REPO_ROOT)} as {ref}")
    run(engine.cmd("import", str(tarball), ref), stdout=subprocess.DEVNULL)
    return ref


def choose_base(engine: Engine) -> str:
    """BASE_IMAGE if set; else the registry's python:3.11-slim if it can be had; else local."""
    wanted = os.environ.get("BASE_IMAGE", "")
    if wanted:
        if not engine.has_image(wanted):
            run(engine.cmd("pull", wanted), timeout=PULL_TIMEOUT_S)
        return wanted
    if engine.has_image(REGISTRY_BASE):
        return REGISTRY_BASE
    try:
        pulled = subprocess.run(engine.cmd("pull", "-q", REGISTRY_BASE), capture_output=True,
                                check=False, timeout=PULL_TIMEOUT_S).returncode == 0  # fmt: skip
    except subprocess.TimeoutExpired:
        pulled = False
    if pulled:
        return REGISTRY_BASE
    say(f"no registry answers for {REGISTRY_BASE}: using the local Debian base")
    return ensure_local_base(engine)


# --- wheelhouse -----------------------------------------------------------------------------


def target_flags() -> list[str]:
    """pip download flags for the image's interpreter and platform (wheels only)."""
    flags = ["--only-binary", ":all:", "--python-version", TARGET_PYTHON, "--implementation",
             "cp", "--abi", "cp" + TARGET_PYTHON.replace(".", ""), "--abi", "abi3",
             "--abi", "none"]  # fmt: skip
    for minor in range(TARGET_GLIBC_MINOR, 4, -1):  # manylinux1 is glibc 2.5
        flags += ["--platform", f"manylinux_2_{minor}_x86_64"]
    return flags


def pip(*args: str) -> list[str]:
    # The host's own pip configuration (index, mirrors) applies; the hashes decide the bytes.
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def wheelhouse(lock: Path, name: str) -> Path:
    """Every wheel of a lock, downloaded and hash-checked once per lock content."""
    folder = WHEELS / name
    stamp = folder / ".lock-sha256"
    want = hashlib.sha256(lock.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == want:
        return folder
    say(f"downloading the wheels of {lock.name} into {folder.relative_to(REPO_ROOT)}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run(pip("download", "-q", "--require-hashes", "--no-deps", "-r", str(lock), "-d", str(folder),
            *target_flags()))  # fmt: skip
    stamp.write_text(want)
    return folder


def app_wheel() -> Path:
    """phiserve's own wheel, built on the host (no build backend runs inside the image)."""
    folder = WHEELS / "app"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    epoch = capture(["git", "log", "-1", "--format=%ct"], cwd=REPO_ROOT).strip()
    env = {**os.environ, "SOURCE_DATE_EPOCH": epoch or "315532800"}
    run(pip("wheel", "-q", "--no-deps", "-w", str(folder), str(REPO_ROOT)), env=env)
    return folder


# --- image ----------------------------------------------------------------------------------


def version() -> str:
    return pyproject()["project"]["version"]


def image_ref(flavour: str) -> str:
    return f"localhost/phiserve:{version()}-{flavour}"


def build_image(engine: Engine, flavour: str, base: str) -> None:
    containerfile = IMAGES / f"{flavour}.Containerfile"
    cmd = engine.cmd("build", "-f", str(containerfile), "--build-arg", f"BASE_IMAGE={base}",
                     "--network", "none", "-t", image_ref(flavour))  # fmt: skip
    if os.environ.get("MODEL_REPOSITORY"):
        cmd += ["--build-arg", f"MODEL_REPOSITORY={os.environ['MODEL_REPOSITORY']}"]
    if engine.name == "podman":
        # docker reads <Containerfile>.dockerignore by itself; podman 4 needs to be told.
        cmd += ["--ignorefile", f"{containerfile}.dockerignore", *engine.build_flags()]
        # docker format: the OCI format has no HEALTHCHECK.
        cmd += ["--layers", "--pull=never", "--format", "docker"]
    run([*cmd, str(REPO_ROOT)])


def sbom_tool() -> Path:
    """cyclonedx-bom installed (pure Python) into a folder that is mounted into the image."""
    folder = BUILD / "sbom-tool"
    stamp = folder / ".installed"
    if stamp.is_file() and stamp.read_text() == CYCLONEDX:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    run(pip("install", "-q", "--no-warn-conflicts", "--target", str(folder), CYCLONEDX))
    stamp.write_text(CYCLONEDX)
    return folder


def write_sbom(engine: Engine, flavour: str) -> Path:
    """CycloneDX JSON of the image's Python packages, made inside the image by cyclonedx-py.

    The tool runs from a read-only mount, on sys.path only in its own process: the environment
    it inspects is the server's venv as the image holds it, not the tool's.
    """
    tool = sbom_tool()
    script = (
        "import runpy, sys; sys.path.insert(0, '/sbom'); "
        "sys.argv = ['cyclonedx-py', 'environment', '--output-reproducible', '--of', 'JSON', "
        "'/opt/phiserve/venv/bin/python']; "
        "runpy.run_module('cyclonedx_py', run_name='__main__')"
    )
    out = capture(engine.cmd("run", "--rm", "--network", "none", "--read-only",
                             *engine.run_flags(), "-v", f"{tool}:/sbom:ro",
                             image_ref(flavour), "python", "-c", script))  # fmt: skip
    bom = json.loads(out)
    names = {c["name"].lower() for c in bom.get("components", [])}
    runtime = "onnxruntime-gpu" if flavour == "gpu" else "onnxruntime"
    missing = {"phiserve", runtime, "bentoml"} - names
    if bom.get("bomFormat") != "CycloneDX" or missing or "cyclonedx-bom" in names:
        raise BuildError(f"the SBOM does not describe the server's venv (missing {missing})")
    path = BUILD / f"phiserve-{version()}-{flavour}.cdx.json"
    path.write_text(json.dumps(bom, indent=2) + "\n")
    return path


def cmd_build(args: argparse.Namespace) -> None:
    flavour = args.flavour
    started = time.monotonic()
    check_lock_current()
    engine = require_engine()
    base = choose_base(engine)
    wheelhouse(LOCK, "cpu")
    if flavour == "gpu":
        wheelhouse(GPU_LOCK, "gpu")
    app_wheel()
    built = time.monotonic()
    build_image(engine, flavour, base)
    build_s = time.monotonic() - built
    sbom = write_sbom(engine, flavour)
    info = engine.image_info(image_ref(flavour))
    report = {
        "image": image_ref(flavour),
        "id": info["Id"],
        "engine": engine.name,
        "base": base,
        "size_mb": round(info["Size"] / 1e6, 1),
        "build_s": round(build_s, 1),
        "total_s": round(time.monotonic() - started, 1),
        "lock_sha256": lock_digest(LOCK),
        "sbom": str(sbom.relative_to(REPO_ROOT)),
    }
    (BUILD / f"phiserve-{version()}-{flavour}.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"{report['image']}: {report['size_mb']} MB on {base}; engine build {report['build_s']} s, "
        f"all steps {report['total_s']} s; SBOM {report['sbom']}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.image", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="regenerate the locks from pyproject.toml").set_defaults(
        func=cmd_lock
    )
    build = sub.add_parser("build", help="build an image and its SBOM")
    build.add_argument("flavour", choices=["cpu", "gpu"])
    build.set_defaults(func=cmd_build)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BuildError as exc:
        print(f"image: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
