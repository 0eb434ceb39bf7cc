"""Build-time proof for the GPU image: onnxruntime-gpu alone, and every library its CUDA
provider links resolves (CUDA runtime, cuBLAS, cuDNN, cuFFT, cuRAND from the nvidia-* wheels,
through ld.so.conf), except the driver's libcuda.so.1, which the node's NVIDIA container runtime
mounts into the container. No GPU needed: the dynamic linker resolves the dependency tree
(``ldd``) without touching a device. Exits non-zero otherwise.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import subprocess
import sys

import onnxruntime

DRIVER = {"libcuda.so.1"}  # provided by the node, never by the image
# Linked by the provider (ELF NEEDED entries), and opened by it at run time by soname.
LINKED = ("libcudart.so", "libcublas.so", "libcublasLt.so", "libcurand.so")
OPENED = ("libcudnn.so", "libcufft.so")


def ldd(library: pathlib.Path) -> dict[str, str]:
    """soname -> path the dynamic linker resolves it to ("not" when it cannot)."""
    out = subprocess.run(["ldd", str(library)], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+) => (\S+)", out, re.M))


def linker_cache() -> dict[str, str]:
    """soname -> path of what a dlopen by soname finds (ld.so.cache, as ldconfig built it)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+) \(libc6,x86-64[^)]*\) => (\S+)", out, re.M))


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def main() -> int:
    try:
        importlib.metadata.distribution("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        return fail("onnxruntime (CPU) is installed beside onnxruntime-gpu")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return fail("this onnxruntime has no CUDA execution provider")
    capi = pathlib.Path(onnxruntime.__file__).parent / "capi"
    provider = capi / "libonnxruntime_providers_cuda.so"
    site = capi.parents[1] / "nvidia"
    shipped = sorted(site.rglob("lib*.so*"))
    for library in [provider, *shipped]:
        missing = {n for n, p in ldd(library).items() if p == "not"} - DRIVER
        if missing:
            return fail(f"{library.name} cannot load: {sorted(missing)} not found")
    linked = ldd(provider)
    cache = linker_cache()
    wanted = {n: p for n, p in linked.items() if n.startswith(LINKED)}
    wanted |= {p.name: cache.get(p.name, "not") for p in shipped if p.name.startswith(OPENED)}
    for name in LINKED + OPENED:
        if not any(n.startswith(name) for n in wanted):
            return fail(f"{name}* is neither linked nor shipped")
    for name, path in wanted.items():
        if path == "not" or not pathlib.Path(path).resolve().is_relative_to(site):
            return fail(f"{name} does not resolve into the nvidia wheels: {path}")
    version = importlib.metadata.version("onnxruntime-gpu")
    print(f"onnxruntime-gpu {version}: {provider.name} and {len(shipped)} wheel libraries resolve "
          f"({', '.join(sorted(wanted))} from the wheels; {', '.join(sorted(DRIVER))} from the "
          "node)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
