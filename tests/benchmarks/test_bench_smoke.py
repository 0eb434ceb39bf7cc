"""Smoke tests of the benchmark harnesses: they run end to end and print numbers.

Tiny durations and no timing assertions: whether phiserve is fast is what ``make bench`` shows,
not what a test can decide on a shared two-core machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.servers import mlserver_available

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"[\d,]+(?:\.\d+)?"

pytestmark = pytest.mark.slow


def _run(module: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PHISERVE_"))}
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny(built_home: Path, out: Path, only: str) -> dict[str, str]:
    return {
        "BENCH_ONLY": only,
        "BENCH_HOME": str(built_home),
        "BENCH_OUT": str(out),
        "BENCH_SECONDS": "1",
        "BENCH_WARMUP": "0.5",
        "BENCH_REPEATS": "1",
        "BENCH_RATE": "50",
        "BENCH_QUIET_WAIT": "0",
        "BENCH_RETRIES": "0",
        "BENCH_INSTALL_MLSERVER": "0",
    }


def _row(stdout: str, server: str, mode: str) -> list[str]:
    """The cells of one table row, or fail showing the whole output."""
    pattern = re.compile(rf"^{re.escape(server)}\s+{re.escape(mode)}\s+(.*)$", re.M)
    match = pattern.search(stdout)
    assert match, f"no row for {server} / {mode} in:\n{stdout}"
    return match.group(1).split()


def _assert_numbers(cells: list[str]) -> None:
    # req/s, p50, p95, p99 are numbers; the error rate is a percentage.
    assert all(re.fullmatch(NUMBER, c) for c in cells[:4]), cells
    assert re.fullmatch(rf"{NUMBER}%", cells[4]), cells


def test_serving_bench_phiserve_and_floor(built_home: Path, tmp_path: Path) -> None:
    proc = _run("benchmarks.serving", _tiny(built_home, tmp_path, "phiserve,floor,open"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^server\s+mode\s+req/s\s+p50 ms\s+p95 ms\s+p99 ms\s+errors", out, re.M), out
    for server in ("phiserve (as shipped)", "floor (Starlette)"):
        _assert_numbers(_row(out, server, "closed 32u"))
        _assert_numbers(_row(out, server, "open 50/s"))
    assert "phiserve/floor throughput" in out
    report = json.loads((tmp_path / "serving-latest.json").read_text())
    assert {r["key"] for r in report["results"]} == {
        "shipped/closed",
        "floor/closed",
        "shipped/open",
        "floor/open",
    }
    assert not any(p.suffix == ".onnx" for p in tmp_path.rglob("*")), "plaintext model left behind"


def test_serving_bench_bentoml_layers(built_home: Path, tmp_path: Path) -> None:
    proc = _run("benchmarks.serving", _tiny(built_home, tmp_path, "bentoml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for server in ("phiserve (as shipped)", "phiserve stack on plain uvicorn"):
        _assert_numbers(_row(out, server, "closed 32u"))
    for figure in ("throughput", "p50", "p99"):
        name = f"BentoML layers: shipped/bare stack {figure}"
        assert re.search(rf"^\s+{re.escape(name)}\s+{NUMBER}\s+goal \(info\)", out, re.M), out
    # Both answered the authenticated probe: the bare stack is phiserve's, auth and all.
    assert "auth as shipped: active" in out


def test_serving_bench_tracing_against_tracing_off(built_home: Path, tmp_path: Path) -> None:
    proc = _run("benchmarks.serving", _tiny(built_home, tmp_path, "tracing"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for server in ("phiserve (as shipped)", "phiserve (trace 0.1)", "phiserve (trace 1.0)"):
        _assert_numbers(_row(out, server, "closed 32u"))
    # The side-by-side block: req/s, p50, p99, then the three ratios to tracing off.
    block = out[out.index("tracing cost") :]
    for server in ("phiserve (trace 0.1)", "phiserve (trace 1.0)"):
        cells = _row(block, server, "closed 32u")
        assert len(cells) == 6 and all(re.fullmatch(NUMBER, c) for c in cells), cells
    for ratio in ("0.1", "1.0"):
        for figure in ("throughput", "p50", "p99"):
            name = f"tracing {ratio}/off {figure}"
            assert re.search(rf"^\s+{re.escape(name)}\s+{NUMBER}\s+goal \(info\)", out, re.M), out
    assert "tracing 1.0/0.0" not in out
    # The spans really left the servers: the SDK's exporter posted them to the sink.
    match = re.search(r"OTLP sink received (\d+) export", out)
    assert match and int(match.group(1)) > 0, out
    assert re.search(r"phiserve \(trace 1\.0\): \d+ span\(s\) dropped", out), out


def test_serving_bench_cds_hooks(built_home: Path, tmp_path: Path) -> None:
    proc = _run(
        "benchmarks.serving",
        {**_tiny(built_home, tmp_path, "cds"), "BENCH_CDS_USERS": "2", "BENCH_CDS_RATE": "4"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    block = out[out.index("CDS Hooks patient-view") :]
    cells = _row(block, "CDS patient-view, 100 obs", "closed 2u")
    _assert_numbers(cells)
    assert cells[4] == "0.00%", cells  # every signed call answered with a card
    cells = _row(block, "CDS patient-view, 100 obs", "open 4/s")
    _assert_numbers(cells)
    assert cells[4] == "0.00%", cells
    assert re.search(rf"^\s+CDS call p99 ms, open 4/s\s+{NUMBER}", out, re.M), out
    assert re.search(rf"^\s+CDS call p99 ms, closed 2u\s+{NUMBER}\s+goal < 50", out, re.M), out
    # The parsing share comes from the server's own CPU counters: a real fraction.
    match = re.search(rf"^\s+CDS: FHIR parsing share of server CPU\s+({NUMBER})", out, re.M)
    assert match and 0 < float(match.group(1)) < 1, out
    report = json.loads((tmp_path / "serving-latest.json").read_text())
    assert [r["key"] for r in report["results"]] == ["cds/closed", "cds/open"]
    assert report["fhir_parse"]["calls"] > 0


def test_serving_bench_mlserver(built_home: Path, tmp_path: Path) -> None:
    if mlserver_available() is None:
        pytest.skip(
            "MLServer venv .venv-mlserver is absent: run `bash tools/bench-venvs.sh` to "
            "include MLServer in this smoke test"
        )
    proc = _run("benchmarks.serving", _tiny(built_home, tmp_path, "mlserver"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_numbers(_row(proc.stdout, "MLServer 1.7", "closed 32u"))


def test_crypto_bench_small(tmp_path: Path) -> None:
    env = {
        "BENCH_CRYPTO_MIB": "2",
        "BENCH_CRYPTO_RUNS": "1",
        "BENCH_OUT": str(tmp_path),
        "BENCH_QUIET_WAIT": "0",
    }
    proc = _run("benchmarks.crypto", env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"warm \(page cache hot\)\s+{NUMBER}", proc.stdout), proc.stdout
    assert re.search(rf"cold \(model file not cached\)\s+{NUMBER}", proc.stdout), proc.stdout
    doc = json.loads((tmp_path / "crypto-latest.json").read_text())
    assert set(doc["ratios"]) == {"warm", "cold"}
