"""``make bench-crypto``: decrypt-and-load of a ~100 MB ONNX model vs loading the plaintext file.

Builds a synthetic model in memory (one MatMul with a single 100 MiB float32 initializer, random
weights), publishes it with the platform's real code (``phiserve.repository.publish``: envelope
encryption under a fresh data key wrapped by a local KEK) into a temporary repository, and writes
the same plaintext bytes to a file beside it: the baseline a user has without encryption.

Then, alternating the two so drift hits both alike, it times

encrypted
    ``ModelRepository.load`` (unwrap the data key, manifest checks, ``AESGCM.decrypt`` reading the
    ciphertext from an mmap of the file) + :class:`phiserve.runtime.onnx.OnnxSession`
    (onnxruntime session from the bytes);
plaintext
    ``onnxruntime.InferenceSession(path)`` with the same session options;

each "warm" (files in the page cache, as on a server's second start) and "cold" (the files'
pages evicted with ``posix_fadvise(DONTNEED)`` before each run, as on a first start after boot;
the rest of the machine stays warm, so this isolates the model file's I/O). It prints medians of
BENCH_CRYPTO_RUNS (7) runs, the ratios (target: encrypted/plaintext <= 1.10) and where the
encrypted path spends its time. Knobs: BENCH_CRYPTO_MIB (100), BENCH_CRYPTO_RUNS,
BENCH_QUIET_WAIT (5 s waited at most for a quiet machine before each timing), BENCH_OUT
(reports/bench). The temporary repository and plaintext file are deleted at the end.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.machine import wait_for_quiet
from benchmarks.ort_options import session_options
from phiserve.crypto.envelope import EnvelopeHeader, open_with_key
from phiserve.crypto.local import LocalKeyProvider
from phiserve.export import TARGET_OPSET, ExportedModel, build_card, check_parity
from phiserve.repository.manifest import artifact_aad, key_context
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from phiserve.runtime.onnx import OnnxSession

NAME = "bench-synthetic"
ROWS = 4096  # input width; the initializer is ROWS x cols float32
REPO_ROOT = Path(__file__).resolve().parent.parent
CPU = "CPUExecutionProvider"


def build_model(mib: int, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """ONNX bytes of ``Y = X @ W`` with W a ``mib`` MiB float32 initializer; returns W too."""
    cols = max(1, mib * 2**20 // (4 * ROWS))
    rng = np.random.default_rng(seed)
    # Scaled so outputs stay O(1): the parity tolerance below is then meaningful.
    weight = (rng.standard_normal((ROWS, cols), dtype=np.float32) / np.sqrt(ROWS)).astype(
        np.float32
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "bench_synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, ROWS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)])
    model.ir_version = 10  # what onnxruntime 1.20+ reads; onnx's newest default may be ahead
    onnx.checker.check_model(model)
    return model.SerializeToString(), weight


def export_synthetic(onnx_bytes: bytes, weight: np.ndarray) -> ExportedModel:
    """An honest ExportedModel for the synthetic model: numpy (float64) is the native reference."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, ROWS), dtype=np.float32)
    expected = {"y": x.astype(np.float64) @ weight.astype(np.float64)}
    # Labels (argmax of 6,400 random scores) mean nothing here; near-ties may flip in float32.
    parity = check_parity(
        NAME, onnx_bytes, {"x": x}, expected, atol=1e-4, rtol=1e-3, min_label_agreement=0.95
    )
    parity["note"] = (
        "synthetic benchmark model (random weights); native reference is numpy float64 matmul"
    )
    card = build_card(
        name=NAME,
        overview="Synthetic model for the decrypt-and-load benchmark (make bench-crypto).",
        owners=[{"name": "phiserve benchmarks", "contact": "n/a"}],
        licence="Apache-2.0",
        references=[],
        architecture=f"One MatMul with a {weight.nbytes / 2**20:.0f} MiB float32 initializer.",
        training_data="None: random weights from a fixed seed.",
        evaluation_data="None: only parity against numpy is checked.",
        input_format=f"x: float32 [N, {ROWS}]",
        output_format=f"y: float32 [N, {weight.shape[1]}]",
        onnx_bytes=onnx_bytes,
        intended_use="Benchmarking model loading only. Computes nothing meaningful.",
        users=["phiserve developers"],
        use_cases=["Timing decrypt-and-load against a plaintext load."],
        limitations=["Random weights: never serve it."],
        risks={"Mistaken for a real model.": "Lives only in a temporary benchmark repository."},
    )
    return ExportedModel(NAME, onnx_bytes, parity, {"note": "not evaluated"}, card)


def evict(*paths: Path) -> None:
    """Drop the files' pages from the page cache (only theirs: nobody else's cache is touched)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "5"))


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes; what it returns is released before the next run."""
    gc.collect()
    # This machine is shared: wait (briefly) for other sessions' bursts to pass.
    wait_for_quiet(QUIET_WAIT, 0.3)
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    del result
    gc.collect()
    return elapsed


def main() -> int:
    """Build, publish, time, print and write reports/bench/crypto-*.{json,md}."""
    mib = int(os.environ.get("BENCH_CRYPTO_MIB", "100"))
    runs = max(1, int(os.environ.get("BENCH_CRYPTO_RUNS", "7")))
    out_dir = Path(os.environ.get("BENCH_OUT", REPO_ROOT / "reports" / "bench"))

    print(f"building a {mib} MiB synthetic ONNX model in memory ...", flush=True)
    onnx_bytes, weight = build_model(mib)
    exported = export_synthetic(onnx_bytes, weight)
    del weight

    with tempfile.TemporaryDirectory(prefix="phiserve-bench-crypto-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o700)
        provider = LocalKeyProvider(tmp / "keys" / "kek.json", create=True)
        repo = ModelRepository(tmp / "models")
        manifest = publish(repo, exported, provider, version=1)
        encrypted_files = [
            tmp / "models" / NAME / "1" / manifest.artifact,
            tmp / "models" / NAME / "1" / "manifest.json",
        ]
        plain = tmp / "plain" / "model.onnx"
        plain.parent.mkdir(mode=0o700)
        plain.write_bytes(onnx_bytes)
        plain.chmod(0o600)
        del exported, onnx_bytes

        def load_encrypted() -> OnnxSession:
            # As the server loads: the GCM tag authenticates, no second hash of the plaintext.
            artifact = repo.load(NAME, 1, provider, check_digest=False)
            return OnnxSession(artifact.manifest, artifact.onnx_bytes, execution_provider="cpu")

        def load_plain() -> ort.InferenceSession:
            return ort.InferenceSession(str(plain), sess_options=session_options(), providers=[CPU])

        # One-time costs (onnxruntime's process initialisation, the process's first large
        # allocations) are paid here, by neither side.
        load_plain()
        load_encrypted()

        times: dict[str, list[float]] = {
            k: [] for k in ("encrypted warm", "plaintext warm", "encrypted cold", "plaintext cold")
        }
        for i in range(runs):
            print(f"  run {i + 1}/{runs}", flush=True)
            order = [("encrypted", load_encrypted), ("plaintext", load_plain)]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                times[f"{name} warm"].append(timed(fn))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                evict(*(encrypted_files if name == "encrypted" else [plain]))
                times[f"{name} cold"].append(timed(fn))

        breakdown = encrypted_breakdown(repo, provider, runs)

    medians = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "warm": medians["encrypted warm"] / medians["plaintext warm"],
        "cold": medians["encrypted cold"] / medians["plaintext cold"],
    }
    text = render(mib, runs, times, medians, ratios, breakdown)
    print()
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "started_utc": stamp,
        "model_mib": mib,
        "runs": runs,
        "times_s": times,
        "medians_s": medians,
        "ratios": ratios,
        "target": 1.10,
        "breakdown_warm_s": breakdown,
        "onnxruntime": ort.__version__,
    }
    for name in (f"crypto-{stamp}", "crypto-latest"):
        (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2))
        (out_dir / f"{name}.md").write_text(
            "# phiserve decrypt-and-load benchmark\n\n```\n" + text + "\n```\n"
        )
    print(f"written: {out_dir / f'crypto-{stamp}.json'} and .md")
    return 0


def encrypted_breakdown(repo: ModelRepository, provider: LocalKeyProvider, runs: int) -> dict:
    """Warm medians of each step of the encrypted path, to show where its extra time goes."""
    manifest = repo.read_manifest(NAME, 1)
    path = repo.root / NAME / "1" / manifest.artifact
    header = EnvelopeHeader.from_json(manifest.encryption)
    context = key_context(NAME, 1)
    aad = artifact_aad(NAME, 1, manifest.sha256)
    steps: dict[str, list[float]] = {
        k: [] for k in ("unwrap data key", "AES-GCM decrypt from mmap", "session from bytes")
    }
    for _ in range(runs):
        t0 = time.perf_counter()
        key = provider.unwrap(header.wrapped, context)
        t1 = time.perf_counter()
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            plaintext = open_with_key(key, header, view, aad)
        t2 = time.perf_counter()
        OnnxSession(manifest, plaintext, execution_provider="cpu")
        t3 = time.perf_counter()
        del plaintext
        gc.collect()
        for name, value in zip(steps, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            steps[name].append(value)
    return {k: statistics.median(v) for k, v in steps.items()}


def render(
    mib: int,
    runs: int,
    times: dict[str, list[float]],
    medians: dict[str, float],
    ratios: dict[str, float],
    breakdown: dict[str, float],
) -> str:
    """The printed report."""
    lines = [
        f"load a {mib} MiB ONNX model into an onnxruntime session (CPU), medians of {runs} runs",
        "",
        f"{'variant':<16} {'median s':>9} {'min s':>7} {'max s':>7}",
    ]
    for key, values in times.items():
        lines.append(f"{key:<16} {medians[key]:9.3f} {min(values):7.3f} {max(values):7.3f}")
    lines += [
        "",
        "ratio encrypted/plaintext (target <= 1.10)",
        f"  warm (page cache hot)          {ratios['warm']:.3f}  "
        + ("meets target" if ratios["warm"] <= 1.10 else "MISSES target"),
        f"  cold (model file not cached)   {ratios['cold']:.3f}  "
        + ("meets target" if ratios["cold"] <= 1.10 else "MISSES target"),
        "",
        "encrypted path, warm, step by step (medians, s)",
    ]
    lines += [f"  {k:<20} {v:7.3f}" for k, v in breakdown.items()]
    lines += [
        "",
        "encrypted = ModelRepository.load as the server calls it (unwrap, manifest MAC, "
        "AESGCM.decrypt of an mmap of the ciphertext; the tag authenticates the digest) "
        "+ OnnxSession (session from bytes); plaintext = InferenceSession(path); same session "
        "options (ORT_ENABLE_ALL, no spinning); cold = the model's files evicted from the page "
        "cache with posix_fadvise(DONTNEED) before each run.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
