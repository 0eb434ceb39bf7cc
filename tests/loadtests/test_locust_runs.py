"""The locustfile run headless for a few seconds against the real server (auth on).

Covers: every encoding on both example models, the SLO gate passing and failing (with the
missed threshold named), the report files and their exact percentiles checked against the raw
samples, clear one-line errors for a wrong token or host, the open-loop arrival rate, a step
ramp, and a distributed run (master and two workers) of the chart's copy of the code as a stock
locust image would run it (no numpy, PyYAML or matplotlib).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.loadtests.conftest import (
    BIN,
    CHART_FILES,
    REPO_ROOT,
    LocustRun,
    clean_env,
    run_locust,
)
from tests.server import ServerProcess, free_port, issue_token

pytestmark = pytest.mark.slow

MODELS = "breast-cancer,chest-xray"


def read_samples(report_dir: Path) -> list[dict[str, str]]:
    with (report_dir / "samples.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def assert_clean_failure(run: LocustRun, *needles: str) -> None:
    """Exit 2, one 'phiserve-load:' line naming the problem, no traceback, no report."""
    assert run.code == 2, run.output
    assert "Traceback" not in run.output, run.output
    line = next((ln for ln in run.output.splitlines() if ln.startswith("phiserve-load:")), "")
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}\n{run.output}"
    assert not (run.report_dir / "samples.csv").exists()


@pytest.fixture(scope="module")
def closed_run(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> LocustRun:
    """One closed-loop run: both models, JSON and binary, batch sizes 1 and 3, generous SLO."""
    out = tmp_path_factory.mktemp("closed") / "report"
    return run_locust(
        out,
        *("-u", "3", "-r", "3", "-t", "4", "--models", MODELS, "--encodings", "json,binary"),
        *("--batch-sizes", "1,3", "--scrape-interval", "1", "--seed", "7"),
        *("--slo", "p95=20000,p99=30000,errors=0%"),
        host=server.url,
        token=server.token,
    )


def test_gate_passes_with_generous_thresholds(closed_run: LocustRun) -> None:
    assert closed_run.code == 0, closed_run.output
    assert "SLO gate: passed" in closed_run.proc.stdout
    assert "Traceback" not in closed_run.output


def test_every_model_version_and_encoding_was_sent(closed_run: LocustRun) -> None:
    rows = read_samples(closed_run.report_dir)
    seen = {(r["model"], r["version"], r["encoding"]) for r in rows}
    assert seen == {
        (m, "1", e) for m in ("breast-cancer", "chest-xray") for e in ("json", "binary")
    }
    assert all(r["ok"] == "1" and r["status"] == "200" for r in rows), "some requests failed"
    assert {r["batch"] for r in rows} == {"1", "3"}
    names = {r["name"] for r in rows}
    assert "POST /v2/models/{model}/versions/{version}/infer [chest-xray v1 binary b3]" in names


def test_report_files_exist(closed_run: LocustRun) -> None:
    out = closed_run.report_dir
    for name in (
        "samples.csv",
        "summary.json",
        "report.md",
        "table.txt",
        "run.json",
        "metrics.json",
        "locust_stats.csv",
        "locust_stats_history.csv",
        "locust_failures.csv",
        "locust.html",
        "charts/latency_over_time.png",
        "charts/throughput_over_time.png",
        "charts/latency_cdf.png",
    ):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} missing or empty"
    assert (out / "charts/latency_cdf.png").read_bytes().startswith(b"\x89PNG")


def test_percentiles_match_the_raw_samples(closed_run: LocustRun) -> None:
    """summary.json, table.txt and report.md hold numpy's percentiles of samples.csv."""
    rows = read_samples(closed_run.report_dir)
    summary = closed_run.summary()
    table = (closed_run.report_dir / "table.txt").read_text()
    report = (closed_run.report_dir / "report.md").read_text()
    assert "exact" in summary["percentiles"]
    assert "Percentiles are exact" in report
    for model in ("breast-cancer", "chest-xray"):
        lat = np.array([float(r["latency_ms"]) for r in rows if r["model"] == model])
        stats = summary["models"][model]
        assert stats["requests"] == lat.size
        for q in (50, 95, 99):
            expected = float(np.percentile(lat, q))
            assert stats[f"p{q}_ms"] == pytest.approx(expected, rel=1e-12, abs=1e-9)
        row = next(ln for ln in table.splitlines() if ln.startswith(f"{model} (all)"))
        assert f"{np.percentile(lat, 95):,.2f}" in row.split()
        assert f"{np.percentile(lat, 99):,.2f}" in row.split()
        md = next(ln for ln in report.splitlines() if ln.startswith(f"| {model} (all)"))
        assert f"| {np.percentile(lat, 99):,.2f} |" in md
    # Locust's own CSV is there for comparison (rounded, but the same request count).
    with (closed_run.report_dir / "locust_stats.csv").open() as fh:
        agg = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    assert int(agg["Request Count"]) == len(rows)


def test_server_side_breakdown_when_metrics_are_served(closed_run: LocustRun) -> None:
    """Queue wait vs inference time per model, from /metrics deltas (tolerated when absent)."""
    summary = closed_run.summary()
    metrics = json.loads((closed_run.report_dir / "metrics.json").read_text())
    report = (closed_run.report_dir / "report.md").read_text()
    if metrics["status"] != "ok":
        assert "Not available" in report
        pytest.skip(f"server /metrics not usable here: {metrics['status']}")
    assert len(metrics["scrapes"]) >= 2
    server = summary["server"]
    for label in ("breast-cancer@1", "chest-xray@1"):
        assert label in server, server.keys()
        if "queue" in server[label]:
            assert server[label]["queue"]["count"] >= 1
            assert server[label]["inference"]["count"] >= 1
    assert "Where the time goes" in report
    assert "queue p99" in report


def test_impossible_thresholds_fail_and_name_the_miss(
    server: ServerProcess, report_dir: Path, tmp_path: Path
) -> None:
    slo = tmp_path / "slo.yaml"
    slo.write_text(
        "default: {p99_ms: 30000, error_rate: 1%}\nmodels:\n  chest-xray: {p99_ms: 0.001}\n"
    )
    run = run_locust(
        report_dir,
        *("-u", "2", "-r", "2", "-t", "2", "--models", MODELS, "--encodings", "binary"),
        *("--slo-file", str(slo), "--no-charts"),
        host=server.url,
        token=server.token,
    )
    assert run.code == 3, run.output
    assert "Traceback" not in run.output
    line = next(ln for ln in run.proc.stderr.splitlines() if "SLO missed" in ln)
    assert line.startswith("phiserve-load: SLO missed: chest-xray p99 ")
    assert line.endswith("> 0.001 ms")
    assert "breast-cancer" not in line  # only the miss is named
    summary = run.summary()
    assert summary["slo"]["passed"] is False
    missed = [c for c in summary["slo"]["checks"] if not c["passed"]]
    assert [(c["group"], c["metric"]) for c in missed] == [("chest-xray", "p99")]
    assert "**MISSED**" in (report_dir / "report.md").read_text()


@pytest.mark.parametrize(
    ("token", "needles"),
    [
        ("not-a-jwt", ("token from $PHISERVE_TOKEN was refused", "401")),
        (None, ("wants a bearer token", "PHISERVE_TOKEN")),
        ("metadata-only", ("lacks a scope", "403", "infer:")),
    ],
    ids=["garbage", "missing", "no-infer-scope"],
)
def test_wrong_token_fails_with_a_clear_message(
    server: ServerProcess, report_dir: Path, token: str | None, needles: tuple[str, ...]
) -> None:
    if token == "metadata-only":
        token = issue_token(server.home, scope="metadata:read")
    run = run_locust(report_dir, "-t", "2", host=server.url, token=token)
    assert_clean_failure(run, *needles)


def test_token_file_that_does_not_exist(server: ServerProcess, report_dir: Path) -> None:
    run = run_locust(
        report_dir, "-t", "2", "--token-file", "/nonexistent/token", host=server.url, token=None
    )
    assert_clean_failure(run, "cannot read token file /nonexistent/token")


@pytest.mark.parametrize(
    ("host", "needles"),
    [
        (f"http://127.0.0.1:{free_port()}", ("cannot reach", "Connection refused")),
        ("127.0.0.1:3000", ("expected http(s)://host:port",)),
    ],
    ids=["closed-port", "no-scheme"],
)
def test_wrong_host_fails_with_a_clear_message(
    report_dir: Path, host: str, needles: tuple[str, ...]
) -> None:
    run = run_locust(report_dir, "-t", "2", host=host, token="x")
    assert_clean_failure(run, *needles)


def test_unknown_model_fails_with_a_clear_message(server: ServerProcess, report_dir: Path) -> None:
    run = run_locust(
        report_dir, "-t", "2", "--models", "no-such-model", host=server.url, token=server.token
    )
    assert_clean_failure(run, "'no-such-model' is not served", "404")


def test_open_loop_issues_at_the_fixed_rate(server: ServerProcess, tmp_path: Path) -> None:
    """Through run.sh (`make loadtest`): 40 req/s for 4 s is 160 requests, evenly spaced."""
    out = tmp_path / "report"
    env = clean_env(
        HOST=server.url,
        PHISERVE_TOKEN=server.token,
        SHAPE="open",
        RATE="40",
        DURATION="4",
        WARMUP="0",
        MODELS="breast-cancer",
        ENCODINGS="binary",
        SLO="p99=30000",
        REPORT_DIR=str(out),
        BIN=str(BIN),
    )
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "loadtests" / "run.sh"), "--no-charts"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_samples(out)
    assert len(rows) == pytest.approx(160, abs=2)
    starts = np.sort(np.array([float(r["t_start"]) for r in rows]))
    gaps = np.diff(starts)
    # Scheduled times are 25 ms apart whatever the answers did: that is the open loop.
    assert float(np.median(gaps)) == pytest.approx(0.025, abs=0.002)
    assert starts[-1] - starts[0] == pytest.approx(159 * 0.025, abs=0.05)
    # Latency runs from the scheduled time, so it is never below the send-to-answer time.
    assert all(float(r["latency_ms"]) >= float(r["service_ms"]) - 1e-3 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["open_loop"] is True
    assert "scheduled send time" in json.loads((out / "summary.json").read_text())["latency_origin"]
    assert "Open loop" in (out / "report.md").read_text()


@pytest.mark.parametrize("shape", ["closed", "open"])
def test_runs_are_bounded_in_count(server: ServerProcess, report_dir: Path, shape: str) -> None:
    """--max-requests ends a long run early, after exactly that many requests."""
    run = run_locust(
        report_dir,
        *("--load-shape", shape, "-u", "3", "-r", "3", "--rate", "100", "-t", "60"),
        *("--max-requests", "40", "--models", "breast-cancer", "--no-charts"),
        host=server.url,
        token=server.token,
        timeout=30,
    )
    assert run.code == 0, run.output
    assert len(read_samples(report_dir)) == 40


def test_step_ramp_reports_each_step(server: ServerProcess, report_dir: Path) -> None:
    run = run_locust(
        report_dir,
        *("--load-shape", "ramp", "--ramp-start", "10", "--ramp-step", "20"),
        *("--ramp-steps", "2", "--ramp-step-s", "2", "--models", "breast-cancer"),
        *("--encodings", "json", "--no-charts"),
        host=server.url,
        token=server.token,
    )
    assert run.code == 0, run.output
    ramp = run.summary()["ramp"]
    assert [s["offered"] for s in ramp] == [10.0, 30.0]
    # Each step's arrivals: rate x step length (exact schedule, a request or two of slack).
    assert ramp[0]["requests"] == pytest.approx(20, abs=1)
    assert ramp[1]["requests"] == pytest.approx(60, abs=2)
    assert "## Ramp" in (report_dir / "report.md").read_text()


def test_distributed_run_of_the_charts_code_on_a_stock_image(
    server: ServerProcess, tmp_path: Path, staged_chart: Path
) -> None:
    """Master + 2 workers with the chart's copy of the code, numpy/PyYAML/matplotlib unavailable.

    This is what the chart runs in the cluster: the staged files/ on PYTHONPATH (ahead of the
    installed package), samples travelling from the workers to the master, whose gate and report
    cover every request.
    """
    blocked = tmp_path / "blocked"
    for module in ("numpy", "yaml", "matplotlib"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text("raise ImportError('not in the image')\n")
    token_file = tmp_path / "token"
    token_file.write_text(server.token)
    slo = tmp_path / "slo.json"
    slo.write_text(json.dumps({"default": {"p99_ms": 30000, "error_rate": 0.01}, "models": {}}))
    out = tmp_path / "report"
    port = free_port()
    env = clean_env(PYTHONPATH=f"{CHART_FILES}:{blocked}")
    imported = subprocess.run(
        [str(BIN / "python"), "-c", "import phiserve_load; print(phiserve_load.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == str(CHART_FILES / "phiserve_load" / "__init__.py")
    locustfile = str(CHART_FILES / "locustfile.py")
    master = subprocess.Popen(
        [
            str(BIN / "locust"),
            *("-f", locustfile, "--master", "--headless", "--only-summary"),
            *("--master-bind-port", str(port), "--expect-workers", "2"),
            *("--expect-workers-max-wait", "60", "--host", server.url),
            *("--load-shape", "open", "--rate", "30", "-t", "3", "--dispatchers", "2"),
            *("--models", MODELS, "--token-file", str(token_file), "--slo-file", str(slo)),
            *("--report-dir", str(out), "--csv", str(out / "locust")),
        ],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # The master waits for both workers (--expect-workers); workers retry until it listens.
    workers = [
        subprocess.Popen(
            [str(BIN / "locust"), "-f", locustfile, "--worker", "--master-port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        output, _ = master.communicate(timeout=90)
    finally:
        for proc in (master, *workers):
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
    assert master.returncode == 0, output
    assert "Traceback" not in output
    rows = read_samples(out)
    # 30 req/s for 3 s, split over two dispatchers on two workers.
    assert len(rows) == pytest.approx(90, abs=2)
    assert {r["model"] for r in rows} == {"breast-cancer", "chest-xray"}
    report = (out / "report.md").read_text()
    assert "Charts were not drawn" in report and "matplotlib" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["requests"] == len(rows)
    assert summary["slo"]["passed"] is True


def test_make_demo_prints_the_reports_table(built_home: Path, tmp_path: Path) -> None:
    """loadtests/demo.sh end to end (on a copy of a prepared home, to keep the suite short)."""
    home = tmp_path / "home"
    shutil.copytree(built_home, home)
    out = tmp_path / "report"
    env = clean_env(
        DEMO_HOME=str(home), DEMO_DURATION="6", DEMO_USERS="2", REPORT_DIR=str(out), BIN=str(BIN)
    )
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "loadtests" / "demo.sh")],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "table.txt").read_text().strip()
    assert table in proc.stdout, "the printed table is not the report's"
    assert f"report: {out}/report.md" in proc.stdout
    assert "SLO gate: passed" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    for model, stats in summary["models"].items():
        printed = next(ln for ln in proc.stdout.splitlines() if ln.startswith(f"{model} (all)"))
        assert f"{stats['p95_ms']:,.2f}" in printed.split()
        assert f"{stats['p99_ms']:,.2f}" in printed.split()
    # The server was stopped: nothing listens on its port any more.
    assert "stopping the server" in proc.stdout
    port = int(re.search(r"serving on http://127\.0\.0\.1:(\d+)", proc.stdout).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
