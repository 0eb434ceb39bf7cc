"""``make bench``: phiserve vs Seldon MLServer vs a bare floor, and what each feature costs.

One run prepares a phiserve home (dev keys, example models), starts side by side on this machine

* phiserve serving ``breast-cancer`` as shipped (auth, audit and model monitoring at their
  defaults, tracing off), with auth and audit off, with model monitoring off, and with
  OpenTelemetry tracing (the SDK's batch processor and OTLP/HTTP exporter, to a local sink)
  sampling 10% and 100% of requests with ``parentbased_traceidratio`` (each compared with tracing
  off, the shipped server: req/s, p50 and p99 ratios side by side; information, not a gate);
* Seldon MLServer 1.7 (its own venv, ``tools/bench-venvs.sh``) serving the same ONNX model through
  :mod:`benchmarks.mlserver_runtime`, with MLServer's default settings;
* the floor (:mod:`benchmarks.floor`): the same onnxruntime call behind a bare Starlette route;
* phiserve's own stack on plain uvicorn (:mod:`benchmarks.bare_stack`), as shipped but without
  BentoML: the shipped/bare ratios are what BentoML's layers in front of phiserve cost;

and drives each in turn, one at a time, with the same locust load (:mod:`benchmarks.loadgen`): a
closed loop of 32 users and an open loop at a fixed arrival rate. Every measured run is repeated
(the servers in a rotating order, so drift spreads over all of them) and the table quotes
medians. Then chest-xray with dynamic batching on and off shows what batching buys, and the
``cds`` group measures a CDS Hooks ``patient-view`` call (the deterioration model, a prefetch of
100 SYNTHETIC Observations, a fresh ES384 client JWT per call, cards back) with BENCH_CDS_USERS
(16) closed-loop users against the shipped server trusting the bench's EHR key: p50/p95/p99
(goal: p99 < 50 ms), the same call at an open-loop BENCH_CDS_RATE (16 calls/s: sixteen clinicians
each opening a chart every second, so the p99 is the call's latency rather than a queue's) and the
FHIR parsing share, i.e. what fhir.resources validation and the
feature mapping cost per call against
the server's CPU per call (both CPU time of the server process, from the same runs: the
server counts the CPU seconds its CDS calls spend in fhir.resources and in the mapping).

Knobs (environment): BENCH_SECONDS (8), BENCH_WARMUP (2), BENCH_REPEATS (3), BENCH_USERS (32),
BENCH_RATE (600 req/s, open loop), BENCH_MAX_OUTSTANDING (256), BENCH_XRAY_USERS (16),
BENCH_XRAY_SECONDS (BENCH_SECONDS), BENCH_XRAY_REPEATS (2), BENCH_CDS_USERS (16),
BENCH_CDS_RATE (16 calls/s), BENCH_ONLY
(comma list of phiserve, features, monitoring, tracing, bentoml, mlserver, mlserver-nolog, floor,
open, xray, cds; default all), BENCH_HOME (reuse a prepared phiserve home instead of building the
example models), BENCH_OUT (reports/bench),
BENCH_INSTALL_MLSERVER (1: create .venv-mlserver with tools/bench-venvs.sh when it is missing).

This machine is shared (other sessions run test suites on the same two cores), so before each
run the harness waits up to BENCH_QUIET_WAIT (4) seconds for the machine to use at most
BENCH_QUIET_LEVEL (0.3) cores, measures the CPU used by anything other than the server and
locust during the run ("other CPU" column, in cores), and repeats a run up to BENCH_RETRIES (1)
times when that exceeds BENCH_MAX_OTHER (0.3 cores), keeping the cleanest attempt, as long as
BENCH_RETRY_BUDGET (60) seconds of retries are left. The "srv CPU ms/req" column (CPU of the
server's process tree per answered request) is the figure least disturbed by such neighbours.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.machine import busy_cores, cpu_seconds, process_tree, wait_for_quiet
from benchmarks.payloads import (
    BREAST_CANCER,
    Payload,
    breast_cancer_json,
    cds_patient_view,
    chest_xray_binary,
)
from benchmarks.servers import (
    REPO,
    BenchServer,
    _plain_env,
    mlserver_available,
    sink_stats,
    start_floor,
    start_mlserver,
    start_phiserve,
    start_sink,
)
from benchmarks.stats import (
    HEADERS,
    RunStats,
    median_of,
    render_markdown,
    render_text,
    summarize,
    table_rows,
)

GROUPS = (
    "phiserve", "features", "monitoring", "tracing", "bentoml", "mlserver", "mlserver-nolog",
    "floor", "open", "xray", "cds",
)  # fmt: skip
# CDS Hooks: Observations in each call's prefetch, and the bench EHR that signs the calls.
CDS_OBSERVATIONS = 100
CDS_ISS = "https://bench-ehr.invalid/"
# phiserve's stack under plain uvicorn (benchmarks.bare_stack): the "bentoml" group's baseline.
BARE_STACK = [sys.executable, "-m", "benchmarks.bare_stack"]


@dataclass(frozen=True)
class BenchConfig:
    """Durations, load and selection, from BENCH_* environment variables."""

    seconds: float = 8.0
    warmup: float = 2.0
    repeats: int = 3
    users: int = 32
    rate: float = 600.0
    max_outstanding: int = 256
    xray_users: int = 16
    xray_seconds: float = 8.0
    xray_repeats: int = 2
    cds_users: int = 16
    cds_rate: float = 16.0
    only: frozenset[str] = frozenset(GROUPS)
    quiet_wait: float = 4.0
    quiet_level: float = 0.3
    max_other: float = 0.3
    retries: int = 1
    retry_budget: float = 60.0
    home: Path | None = None
    out_dir: Path = REPO / "reports" / "bench"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BenchConfig:
        """Read the knobs; unknown BENCH_ONLY groups are an error, not silently ignored."""
        env = dict(os.environ if env is None else env)
        seconds = float(env.get("BENCH_SECONDS", cls.seconds))
        only = frozenset(
            g.strip() for g in env.get("BENCH_ONLY", ",".join(GROUPS)).split(",") if g.strip()
        )
        unknown = only - set(GROUPS)
        if unknown:
            raise SystemExit(f"BENCH_ONLY: unknown group(s) {sorted(unknown)}; use {GROUPS}")
        return cls(
            seconds=seconds,
            warmup=float(env.get("BENCH_WARMUP", cls.warmup)),
            repeats=max(1, int(env.get("BENCH_REPEATS", cls.repeats))),
            users=int(env.get("BENCH_USERS", cls.users)),
            rate=float(env.get("BENCH_RATE", cls.rate)),
            max_outstanding=int(env.get("BENCH_MAX_OUTSTANDING", cls.max_outstanding)),
            xray_users=int(env.get("BENCH_XRAY_USERS", cls.xray_users)),
            xray_seconds=float(env.get("BENCH_XRAY_SECONDS", seconds)),
            xray_repeats=max(1, int(env.get("BENCH_XRAY_REPEATS", cls.xray_repeats))),
            cds_users=int(env.get("BENCH_CDS_USERS", cls.cds_users)),
            cds_rate=float(env.get("BENCH_CDS_RATE", cls.cds_rate)),
            only=only,
            quiet_wait=float(env.get("BENCH_QUIET_WAIT", cls.quiet_wait)),
            quiet_level=float(env.get("BENCH_QUIET_LEVEL", cls.quiet_level)),
            max_other=float(env.get("BENCH_MAX_OTHER", cls.max_other)),
            retries=max(0, int(env.get("BENCH_RETRIES", cls.retries))),
            retry_budget=float(env.get("BENCH_RETRY_BUDGET", cls.retry_budget)),
            home=Path(env["BENCH_HOME"]) if env.get("BENCH_HOME") else None,
            out_dir=Path(env.get("BENCH_OUT", cls.out_dir)),
        )


@dataclass(frozen=True)
class Scenario:
    """One measured configuration: a server, a payload and a load."""

    key: str
    server: str
    label: str
    mode: str  # "closed" or "open"
    payload: Payload
    users: int
    rate: float
    seconds: float
    repeats: int

    @property
    def mode_label(self) -> str:
        """How the table names the load."""
        return f"closed {self.users}u" if self.mode == "closed" else f"open {self.rate:g}/s"


@dataclass
class Outcome:
    """Every repeat of one scenario, and their median."""

    scenario: Scenario
    runs: list[RunStats] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> RunStats:
        """Field-wise median over the repeats."""
        return median_of(self.runs)


# Server key -> (table label, environment of `phiserve serve`, send a bearer token).
_OFF = {"PHISERVE_AUTH_ENABLED": "false", "PHISERVE_AUDIT_ENABLED": "false"}


def _otel(ratio: str, sink_url: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": ratio,
        "OTEL_SERVICE_NAME": "phiserve-bench",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }


def phiserve_variants(
    sink_url: str, cds_env: dict[str, str] | None = None
) -> dict[str, tuple[str, dict[str, str], bool]]:
    """The phiserve configurations the scenarios may ask for."""
    return {
        "cds": ("phiserve CDS Hooks", cds_env or {}, True),
        "shipped": ("phiserve (as shipped)", {}, True),
        "off": ("phiserve (auth+audit off)", dict(_OFF), False),
        "nomon": ("phiserve (monitoring off)", {"PHISERVE_MONITORING_ENABLED": "false"}, True),
        "trace1": ("phiserve (trace 1.0)", _otel("1.0", sink_url), True),
        "trace01": ("phiserve (trace 0.1)", _otel("0.1", sink_url), True),
        "xray-unbatched": (
            "phiserve (batching off)",
            {**_OFF, "PHISERVE_BATCHING__ENABLED": "false"},
            False,
        ),
    }


@functools.cache
def cds_private_jwk() -> dict[str, Any]:
    """The bench EHR's ES384 signing key (one per run), as a private JWK."""
    key = ec.generate_private_key(ec.SECP384R1())
    return {**json.loads(ECAlgorithm.to_jwk(key)), "kid": "bench-ehr", "alg": "ES384"}


def cds_env(tmp: Path) -> dict[str, str]:
    """``PHISERVE_CDS_CLIENTS`` trusting the bench EHR (its public key in a JWKS file)."""
    public = {k: v for k, v in cds_private_jwk().items() if k != "d"}
    jwks = tmp / "cds-ehr-jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    return {"PHISERVE_CDS_CLIENTS": json.dumps([{"iss": CDS_ISS, "jwks_file": str(jwks)}])}


def build_scenarios(cfg: BenchConfig, mlserver: bool) -> list[Scenario]:
    """What to measure, given BENCH_ONLY and whether MLServer's venv exists."""
    bc = breast_cancer_json()
    xr = chest_xray_binary()
    closed = [("phiserve", "shipped", "phiserve (as shipped)")]
    if "features" in cfg.only:
        closed.append(("features", "off", "phiserve (auth+audit off)"))
    if "monitoring" in cfg.only:
        closed.append(("monitoring", "nomon", "phiserve (monitoring off)"))
    if "tracing" in cfg.only:
        closed += [
            ("tracing", "trace01", "phiserve (trace 0.1)"),
            ("tracing", "trace1", "phiserve (trace 1.0)"),
        ]
    if "bentoml" in cfg.only:
        closed.append(("bentoml", "bare", "phiserve stack on plain uvicorn"))
    if mlserver:
        closed.append(("mlserver", "mlserver", "MLServer 1.7"))
        # MLServer's default debug=true turns uvicorn's access log on; a user who reads the docs
        # turns it off. Shown so the comparison is not only against a handicapped default.
        closed.append(("mlserver-nolog", "mlserver-nolog", "MLServer 1.7 (debug=false)"))
    closed.append(("floor", "floor", "floor (Starlette)"))
    out: list[Scenario] = []
    # The shipped server is the baseline of the features, monitoring, tracing and BentoML ratios.
    baseline = {"phiserve", "features", "monitoring", "tracing", "bentoml"} & set(cfg.only)
    for group, server, label in closed:
        if group not in cfg.only and not (server == "shipped" and baseline):
            continue
        out.append(
            Scenario(
                f"{server}/closed",
                server,
                label,
                "closed",
                bc,
                cfg.users,
                0,
                cfg.seconds,
                cfg.repeats,
            )
        )
    if "open" in cfg.only:
        for group, server, label in closed:
            if group in ("phiserve", "mlserver", "floor") and group in cfg.only:
                out.append(
                    Scenario(
                        f"{server}/open",
                        server,
                        label,
                        "open",
                        bc,
                        0,
                        cfg.rate,
                        cfg.seconds,
                        cfg.repeats,
                    )
                )
    if "cds" in cfg.only:
        call = cds_patient_view(CDS_OBSERVATIONS)
        label = "CDS patient-view, 100 obs"
        out += [
            Scenario(
                "cds/closed", "cds", label, "closed", call, cfg.cds_users, 0, cfg.seconds,
                cfg.repeats,
            ),
            Scenario(
                "cds/open", "cds", label, "open", call, 0, cfg.cds_rate, cfg.seconds, cfg.repeats
            ),
        ]  # fmt: skip
    if "xray" in cfg.only:
        xs, xn = cfg.xray_seconds, cfg.xray_repeats
        out += [
            Scenario("xray/b1", "off", "chest-xray, batching on", "closed", xr, 1, 0, xs, xn),
            Scenario(
                "xray/batched",
                "off",
                "chest-xray, batching on",
                "closed",
                xr,
                cfg.xray_users,
                0,
                xs,
                xn,
            ),
            Scenario(
                "xray/unbatched",
                "xray-unbatched",
                "chest-xray, batching off",
                "closed",
                xr,
                cfg.xray_users,
                0,
                xs,
                xn,
            ),
        ]
    return out


def extract_plaintext(home: Path, name: str, dest: Path) -> Path:
    """Decrypt ``name``'s latest version with the home's dev KEK into ``dest`` (0600).

    Only MLServer and the floor need a file; it lives in the benchmark's temp dir and is deleted
    with it. phiserve itself never sees it: it decrypts in memory.
    """
    from phiserve.config import Settings
    from phiserve.crypto import key_provider_from_settings
    from phiserve.repository.store import ModelRepository

    settings = Settings(home=home, key_provider="local")
    repo = ModelRepository(settings.repository_dir)
    version = repo.versions(name)[-1]
    data = repo.load(name, version, key_provider_from_settings(settings)).onnx_bytes
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return dest


def probe(server: BenchServer, payload: Payload, token: str | None) -> tuple[int, Any]:
    """One request outside any measurement: status and parsed JSON (or text)."""
    headers = dict(payload.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = httpx.post(
            server.url + payload.path, content=payload.body, headers=headers, timeout=30
        )
    except httpx.HTTPError as exc:
        raise RuntimeError(
            f"{server.label} at {server.url}: {exc}\n{server.log()[-3000:]}"
        ) from None
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text[:200]


def _label_of(doc: Any) -> Any:
    """The predicted label from a V2 response (for a cross-server sanity check)."""
    if not isinstance(doc, dict):
        return None
    for out in doc.get("outputs", []):
        if out.get("name") == "label":
            data = out.get("data")
            return data[0] if isinstance(data, list) and data else data
    return None


def run_load(
    scenario: Scenario, server: BenchServer, cfg: BenchConfig, workdir: Path, tag: str
) -> tuple[RunStats, dict[str, int]]:
    """One measured run in a fresh load-generator process."""
    conf = {
        "host": server.url,
        "payload": scenario.payload.to_json(),
        "mode": scenario.mode,
        "users": scenario.users,
        "rate": scenario.rate or cfg.rate,
        "max_outstanding": cfg.max_outstanding,
        "warmup_s": cfg.warmup,
        "seconds": scenario.seconds,
        "token": server.token,
        "server_pids": [server.pid],
        # CDS Hooks: the load generator signs a client JWT per call instead of a bearer token.
        "cds": {"jwk": cds_private_jwk(), "iss": CDS_ISS} if scenario.server == "cds" else None,
    }
    conf_path = workdir / f"load-{tag}.json"
    out_path = workdir / f"result-{tag}.json"
    log_path = workdir / f"locust-{tag}.log"
    conf_path.write_text(json.dumps(conf))
    with open(log_path, "wb") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.loadgen", str(conf_path), str(out_path)],
            cwd=REPO,
            env=_plain_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=cfg.warmup + scenario.seconds + 120,
        )
    if proc.returncode != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"load generator failed ({proc.returncode}) for {scenario.key}:\n{tail}")
    raw = json.loads(out_path.read_text())
    return summarize(raw), raw["errors"]


@dataclass
class RetryBudget:
    """Seconds left for re-running disturbed runs, so a busy machine cannot stretch the bench."""

    seconds: float
    used: int = 0


def measure(
    scenario: Scenario,
    server: BenchServer,
    cfg: BenchConfig,
    workdir: Path,
    tag: str,
    budget: RetryBudget,
) -> tuple[RunStats, dict[str, int], int]:
    """One measured run, retried while other processes took too much CPU during it.

    Returns the cleanest attempt (least foreign CPU), its errors, and how many attempts it took.
    """
    attempts: list[tuple[RunStats, dict[str, int]]] = []
    revived = 0
    attempt = 0
    while attempt <= cfg.retries:
        if attempt:
            if budget.seconds <= 0:
                break
            budget.used += 1
        began = time.monotonic()
        wait_for_quiet(cfg.quiet_wait, cfg.quiet_level)
        # Another session on this machine may kill "bentoml serve" processes by name.
        server.revive()
        stats, errors = run_load(scenario, server, cfg, workdir, f"{tag}-{attempt}-{revived}")
        if not server.alive() and revived < 2:
            # It died during the run: its numbers measure the death, not the server.
            revived += 1
            print(f"    {server.label} died during the run; restarting it", flush=True)
            continue
        if attempt:
            budget.seconds -= time.monotonic() - began
        attempts.append((stats, errors))
        if stats.other_cpu <= cfg.max_other:
            break
        attempt += 1
    stats, errors = min(attempts, key=lambda a: a[0].other_cpu)
    return stats, errors, len(attempts)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    for pkg in ("bentoml", "onnxruntime", "locust", "uvicorn", "starlette"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "?"
    try:
        out["phiserve commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        out["phiserve commit"] = "?"
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def compute_ratios(
    outcomes: dict[str, Outcome], cfg: BenchConfig, fhir: dict[str, Any] | None = None
) -> list[tuple[str, float, str, str]]:
    """(name, value, goal, verdict) for every ratio whose runs exist; ``fhir``: what reading
    FHIR cost the CDS server per call (:func:`cds_fhir_cpu`)."""

    def m(key: str) -> RunStats | None:
        return outcomes[key].median if key in outcomes else None

    rows: list[tuple[str, float, str, str]] = []

    def add(name: str, value: float, goal: str, ok: bool | None) -> None:
        verdict = "-" if ok is None or value != value else ("meets goal" if ok else "MISSES goal")
        rows.append((name, value, goal, verdict))

    ship, ml, floor = m("shipped/closed"), m("mlserver/closed"), m("floor/closed")
    if ship and ml:
        r = _ratio(ship.throughput, ml.throughput)
        add(f"phiserve/MLServer throughput, closed {cfg.users}u", r, ">= 1.25", r >= 1.25)
        r = _ratio(ship.p99_ms, ml.p99_ms)
        add(f"phiserve/MLServer p99, closed {cfg.users}u", r, "<= 0.80", r <= 0.80)
        add("phiserve errors, closed (goal: none)", ship.error_rate, "0", ship.error_rate == 0)
    ship_o, ml_o = m("shipped/open"), m("mlserver/open")
    if ship_o and ml_o:
        r = _ratio(ship_o.p99_ms, ml_o.p99_ms)
        add(f"phiserve/MLServer p99, open {cfg.rate:g}/s", r, "(info)", None)
    if ship and floor:
        add(
            f"phiserve/floor throughput, closed {cfg.users}u",
            _ratio(ship.throughput, floor.throughput),
            "(info)",
            None,
        )
    bare = m("bare/closed")
    if ship and bare:
        for figure, attr in TRACING_FIGURES:
            value = _ratio(getattr(ship, attr), getattr(bare, attr))
            add(f"BentoML layers: shipped/bare stack {figure}", value, "(info)", None)
    off = m("off/closed")
    if ship and off:
        r = _ratio(ship.throughput, off.throughput)
        add("auth+audit on/off throughput", r, ">= 0.90", r >= 0.90)
    # Model monitoring's cost: the shipped server monitors breast-cancer; "nomon" does not.
    nomon = m("nomon/closed")
    if ship and nomon:
        r = _ratio(ship.p99_ms, nomon.p99_ms)
        add("monitoring on/off p99, closed", r, "<= 1.05 (no measurable cost)", r <= 1.05)
        r = _ratio(ship.throughput, nomon.throughput)
        add("monitoring on/off throughput, closed", r, ">= 0.95", r >= 0.95)
    # Tracing's cost against tracing off (the shipped server, auth and audit on in all three).
    for ratio, key in TRACING:
        traced = m(key)
        if traced and ship:
            for figure, attr in TRACING_FIGURES:
                value = _ratio(getattr(traced, attr), getattr(ship, attr))
                add(f"tracing {ratio}/off {figure}", value, "(info)", None)
    cds = m("cds/closed")
    if cds:
        add(f"CDS call p99 ms, closed {cfg.cds_users}u", cds.p99_ms, "< 50", cds.p99_ms < 50)
        add("CDS call errors (goal: none)", cds.error_rate, "0", cds.error_rate == 0)
    cds_open = m("cds/open")
    if cds_open:
        add(f"CDS call p99 ms, open {cfg.cds_rate:g}/s", cds_open.p99_ms, "(info)", None)
    if cds and fhir:
        cpu, parse = cds.server_cpu_ms_per_req, fhir["parse_ms"]
        mapping = fhir["parse_ms"] + fhir["extract_ms"]
        add("CDS: server CPU ms per call", cpu, "(info)", None)
        add("CDS: fhir.resources parse CPU ms per call", parse, "(info)", None)
        add("CDS: feature mapping CPU ms per call", fhir["extract_ms"], "(info)", None)
        add("CDS: FHIR parsing share of server CPU", _ratio(parse, cpu), "(info)", None)
        add("CDS: parse + mapping share of server CPU", _ratio(mapping, cpu), "(info)", None)
    xb, xu = m("xray/batched"), m("xray/unbatched")
    if xb and xu:
        r = _ratio(xb.throughput, xu.throughput)
        add(f"chest-xray batched/unbatched throughput, {cfg.xray_users}u", r, "(> 1: pays)", None)
    return rows


# Sampling ratio -> scenario, and the figures compared with tracing off.
TRACING = (("0.1", "trace01/closed"), ("1.0", "trace1/closed"))
TRACING_FIGURES = (("throughput", "throughput"), ("p50", "p50_ms"), ("p99", "p99_ms"))
TRACING_HEADERS = [
    "server",
    "mode",
    "req/s",
    "p50 ms",
    "p99 ms",
    "req/s /off",
    "p50 /off",
    "p99 /off",
]


def tracing_rows(outcomes: dict[str, Outcome]) -> list[list[str]]:
    """Tracing off, 0.1 and 1.0 side by side: figures and their ratios to tracing off."""
    off = outcomes.get("shipped/closed")
    if off is None or not any(key in outcomes for _, key in TRACING):
        return []
    rows = []
    for outcome in [off, *(outcomes[key] for _, key in TRACING if key in outcomes)]:
        s, base = outcome.median, off.median
        rows.append(
            [
                outcome.scenario.label,
                outcome.scenario.mode_label,
                f"{s.throughput:,.0f}",
                f"{s.p50_ms:.2f}",
                f"{s.p99_ms:.2f}",
                *(f"{_ratio(getattr(s, a), getattr(base, a)):.2f}" for _, a in TRACING_FIGURES),
            ]
        )
    return rows


def cds_fhir_cpu(server: BenchServer) -> dict[str, float]:
    """CPU ms per CDS call the server spent in fhir.resources parsing and in the feature
    mapping, over every call it answered (its /metrics: phiserve.cds.metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    totals: dict[str, float] = {"calls": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "phiserve_cds_fhir_cpu_seconds_total":
                totals[sample.labels["stage"]] = sample.value
            elif sample.name == "phiserve_cds_cards_total":
                totals["calls"] += sample.value
    calls = totals["calls"] or float("nan")
    return {
        "calls": totals["calls"],
        "parse_ms": 1000.0 * totals.get("parse", float("nan")) / calls,
        "extract_ms": 1000.0 * totals.get("extract", float("nan")) / calls,
    }


def prepare_home_for(cfg: BenchConfig, base_home: Path) -> None:
    """A phiserve home with dev keys and the example models (or a copy of BENCH_HOME)."""
    if cfg.home:
        shutil.copytree(cfg.home, base_home)
        print(f"phiserve home: copy of {cfg.home}", flush=True)
        return
    from tests.server import prepare_home

    print("preparing a phiserve home (dev keys, example models) ...", flush=True)
    prepare_home(base_home, REPO / "models")


def start_servers(
    needed: set[str],
    base_home: Path,
    model_file: Path | None,
    sink: BenchServer | None,
    tmp: Path,
    servers: dict[str, BenchServer],
) -> None:
    """Start every server the scenarios need (all at once: start-up overlaps), wait for ready.

    ``servers`` is filled as they start, so the caller can stop them whatever happens.
    """
    variants = phiserve_variants(
        sink.url if sink else "http://127.0.0.1:9", cds_env(tmp) if "cds" in needed else None
    )
    print(f"starting servers: {', '.join(sorted(needed))} ...", flush=True)
    for key in sorted(needed):
        if key in variants:
            label, env, auth = variants[key]
            servers[key] = start_phiserve(label, base_home, tmp, env, auth=auth)
        elif key == "bare":
            servers[key] = start_phiserve(
                "phiserve stack on plain uvicorn", base_home, tmp, {}, auth=True, command=BARE_STACK
            )
        elif key == "mlserver":
            assert model_file is not None
            servers[key] = start_mlserver(BREAST_CANCER, model_file, tmp, label="MLServer")
        elif key == "mlserver-nolog":
            assert model_file is not None
            servers[key] = start_mlserver(
                BREAST_CANCER,
                model_file,
                tmp,
                label="MLServer debug=false",
                overrides={"debug": False},
            )
        elif key == "floor":
            assert model_file is not None
            servers[key] = start_floor(BREAST_CANCER, model_file, tmp)
    for server in servers.values():
        server.wait_ready()


def check_servers(servers: dict[str, BenchServer]) -> list[str]:
    """Every server answers the probe with 200 and the same label; is auth really on?"""
    notes = []
    bc = breast_cancer_json()
    labels = {}
    for server in servers.values():
        status, doc = probe(server, bc, server.token)
        if status != 200:
            raise RuntimeError(f"{server.label} answered {status} to the probe: {doc}")
        labels[server.label] = _label_of(doc)
    if len({json.dumps(v) for v in labels.values()}) > 1:
        notes.append(f"WARNING: servers disagree on the probe's label: {labels}")
    if "shipped" in servers:
        status, _ = probe(servers["shipped"], bc, None)
        if status == 401:
            notes.append("auth as shipped: active (a request without a token got 401)")
        else:
            notes.append(
                f"auth as shipped: NOT active in this build (no token -> {status}); the "
                "auth+audit ratio measures nothing until it is wired in"
            )
    # Idle servers must not be what disturbs the measured one: show what they use at rest.
    procs = process_tree([s.pid for s in servers.values()])
    before = cpu_seconds(procs)
    machine = busy_cores(2.0)
    ours = (cpu_seconds(procs) - before) / 2.0
    notes.append(
        f"at rest: all {len(servers)} servers together used {ours:.2f} cores; the whole machine "
        f"{machine:.2f} cores (the rest is other work on this shared machine)"
    )
    return notes


def run_scenarios(
    scenarios: list[Scenario], servers: dict[str, BenchServer], cfg: BenchConfig, tmp: Path
) -> tuple[dict[str, Outcome], int]:
    """Every repeat of every scenario, in rotating order; returns outcomes and retry count."""
    outcomes: dict[str, Outcome] = {s.key: Outcome(s) for s in scenarios}
    budget = RetryBudget(cfg.retry_budget)
    rounds = max((s.repeats for s in scenarios), default=0)
    for rep in range(rounds):
        todo = [s for s in scenarios if s.repeats > rep]
        # Rotate the start so that slow drift (thermal, neighbours) spreads over every server.
        shift = rep % len(todo) if todo else 0
        for scenario in todo[shift:] + todo[:shift]:
            tag = f"{scenario.key.replace('/', '-')}-{rep}"
            stats, errors, tries = measure(
                scenario, servers[scenario.server], cfg, tmp, tag, budget
            )
            outcome = outcomes[scenario.key]
            outcome.runs.append(stats)
            for k, v in errors.items():
                outcome.errors[k] = outcome.errors.get(k, 0) + v
            print(
                f"  [{rep + 1}/{rounds}] {scenario.label:<28} {scenario.mode_label:<12}"
                f" {stats.throughput:8.0f} req/s  p50 {stats.p50_ms:7.2f}"
                f"  p99 {stats.p99_ms:7.2f} ms  errors {100 * stats.error_rate:.2f}%"
                f"  other CPU {stats.other_cpu:.2f}" + (f" ({tries} tries)" if tries > 1 else ""),
                flush=True,
            )
    return outcomes, budget.used


def feature_checks(servers: dict[str, BenchServer], sink: BenchServer | None) -> list[str]:
    """Did the features we meant to measure really run (audit files written, spans exported)?"""
    notes = []
    shipped = servers.get("shipped")
    if shipped is not None and shipped.home is not None:
        audit = shipped.home / "audit"
        files = [p for p in audit.rglob("*") if p.is_file()] if audit.exists() else []
        notes.append(
            f"audit as shipped: {len(files)} file(s) under the home's audit/ after the runs"
            + ("" if files else " -> audit NOT active in this build")
        )
    if sink is not None:
        got = sink_stats(sink)
        if got.get("posts", 0) == 0:
            time.sleep(6)  # the SDK's batch processor exports every 5 s by default
            got = sink_stats(sink)
        notes.append(
            f"OTLP sink received {got['posts']} export(s), {got['bytes']:,} bytes"
            + ("" if got["posts"] > 0 else " -> tracing NOT active in this build")
        )
    for key in ("trace01", "trace1"):
        if key in servers:
            # The SDK's batch processor logs each span it drops because its queue is full.
            dropped = servers[key].log().count("Queue full, dropping")
            notes.append(
                f"{servers[key].label}: {dropped} span(s) dropped by a full export queue"
                + (" -> its cost is understated (OTEL_BSP_MAX_QUEUE_SIZE)" if dropped else "")
            )
    return notes


def main() -> int:
    """Run the whole benchmark; print the table and write reports/bench/serving-*.{json,md}."""
    cfg = BenchConfig.from_env()
    started = time.time()
    # SIGTERM (a CI timeout, a person) must still stop the servers: make it unwind `finally`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    wants_ml = bool(cfg.only & {"mlserver", "mlserver-nolog"})
    ml_version = mlserver_available() if wants_ml else None
    if wants_ml and ml_version is None and os.environ.get("BENCH_INSTALL_MLSERVER", "1") == "1":
        # `make bench` on a fresh clone: build the benchmark-only venv (once, a few minutes).
        subprocess.run(["bash", str(REPO / "tools" / "bench-venvs.sh")], check=False)
        ml_version = mlserver_available()
    if wants_ml and ml_version is None:
        print(
            "MLServer is skipped: its venv .venv-mlserver is missing "
            "(create it with `bash tools/bench-venvs.sh`)",
            flush=True,
        )
    scenarios = build_scenarios(cfg, ml_version is not None)
    needed = {s.server for s in scenarios}
    notes: list[str] = []
    servers: dict[str, BenchServer] = {}

    with tempfile.TemporaryDirectory(prefix="phiserve-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o700)
        base_home = tmp / "home"
        prepare_home_for(cfg, base_home)
        model_file: Path | None = None
        if needed & {"mlserver", "mlserver-nolog", "floor"}:
            model_file = extract_plaintext(base_home, BREAST_CANCER, tmp / "plain" / "model.onnx")
        sink: BenchServer | None = None
        try:
            if needed & {"trace1", "trace01"}:
                sink = start_sink(tmp)
                sink.wait_ready(path="/stats")
            start_servers(needed, base_home, model_file, sink, tmp, servers)
            print(f"all servers ready after {time.time() - started:.0f} s", flush=True)
            notes += check_servers(servers)
            outcomes, retried = run_scenarios(scenarios, servers, cfg, tmp)
            fhir = cds_fhir_cpu(servers["cds"]) if "cds" in servers else None
            notes.append(
                f"runs repeated because other processes used > {cfg.max_other:g} cores: {retried}"
            )
            disturbed = [
                o.scenario.label + " " + o.scenario.mode_label
                for o in outcomes.values()
                if o.runs and o.median.other_cpu > 0.5
            ]
            if disturbed:
                notes.append(
                    f"WARNING: {len(disturbed)} of {len(outcomes)} results had more than 0.5 "
                    "cores taken by other work during their median run; throughput and tail "
                    "latency are then unreliable (srv CPU ms/req much less so): rerun on an idle "
                    "machine before quoting them"
                )
            notes += feature_checks(servers, sink)
            for server in servers.values():
                if server.restarts:
                    notes.append(
                        f"{server.label} was found dead and restarted {server.restarts} time(s) "
                        "(killed from outside: another session on this machine?)"
                    )
        finally:
            for server in [*servers.values(), *([sink] if sink else [])]:
                try:
                    server.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"stopping {server.label}: {exc}", file=sys.stderr)
            # The temp dir goes too; removing the plaintext first keeps its lifetime obvious.
            if model_file is not None:
                model_file.unlink(missing_ok=True)

    report = build_report(
        cfg, outcomes, servers, ml_version, notes, time.time() - started, fhir=fhir
    )
    print()
    print(report["text"])
    write_report(cfg, report)
    return 0


def describe_servers(
    cfg: BenchConfig, servers: dict[str, BenchServer], ml_version: str | None
) -> list[str]:
    """How each server and the load generator were configured, for the report."""
    lines = []
    for key, s in servers.items():
        if key == "mlserver":
            lines.append(
                f"MLServer {ml_version} (own venv; uvloop pinned < 0.22, see tools/bench-venvs.sh): "
                "`mlserver start DIR`; settings.json sets only host=127.0.0.1 and free "
                "http/grpc/metrics ports, everything else is MLServer's default: "
                "parallel_workers=1 (inference in one separate worker process), debug=true "
                "(uvicorn access log on), gzip on, metrics server on, no adaptive batching; "
                "model runtime benchmarks/mlserver_runtime.py (NumpyCodec, onnxruntime CPU)"
            )
        elif key == "mlserver-nolog":
            lines.append("MLServer 1.7 (debug=false): as above plus debug=false (no access log)")
        elif key == "floor":
            lines.append(
                "floor: benchmarks/floor.py, Starlette route, uvicorn httptools + uvloop, "
                "1 worker, no access log, inference inline on the event loop"
            )
        elif key == "bare":
            lines.append(
                f"{s.label}: benchmarks/bare_stack.py, phiserve's ASGI stack with the shipped "
                "settings on uvicorn (httptools + uvloop, no access log), without BentoML"
            )
        else:
            env = " ".join(f"{k}={v}" for k, v in s.settings.items() if "ENDPOINT" not in k)
            lines.append(f"{s.label}: `phiserve serve` {env or '(defaults)'}")
    lines.append(
        "onnxruntime session options identical in all three: ORT_ENABLE_ALL, intra_op threads "
        "default, spinning off (benchmarks/ort_options.py = phiserve's own)"
    )
    lines.append(
        f"load: locust {_versions().get('locust')} as a library, 1 process on the same 2 cores, "
        f"FastHttpUser, one V2 JSON request with 1 row of 30 FP32; closed loop = {cfg.users} "
        f"users, no wait; open loop = {cfg.rate:g} req/s fixed schedule, latency from the "
        f"intended send time (no coordinated omission), at most {cfg.max_outstanding} in flight; "
        f"{cfg.warmup:g} s warm-up discarded, {cfg.seconds:g} s measured, medians of "
        f"{cfg.repeats} repeats in rotating order; percentiles from exact per-request samples "
        "(successful requests)"
    )
    if "cds" in servers:
        lines.append(
            f"cds: {cfg.cds_users} closed-loop users, POST /cds-services/deterioration with a "
            f"prefetch of {CDS_OBSERVATIONS} SYNTHETIC Observations (phiserve_load.cds), a fresh "
            "ES384 client JWT per call (signed before the run), against the shipped server "
            "trusting the bench EHR (PHISERVE_CDS_CLIENTS); FHIR parsing CPU from the server's "
            "phiserve_cds_fhir_cpu_seconds_total over all its calls"
        )
    return lines


CDS_TITLE = (
    "CDS Hooks patient-view (deterioration), prefetch of 100 Observations, ES384 client JWT per "
    "call (medians)"
)


def build_report(
    cfg: BenchConfig,
    outcomes: dict[str, Outcome],
    servers: dict[str, BenchServer],
    ml_version: str | None,
    notes: list[str],
    elapsed: float,
    *,
    fhir: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The printed text, the markdown and the JSON document of one benchmark run."""

    def rows(group: str | None) -> list[tuple[str, str, RunStats]]:
        # The breast-cancer scenarios are the main table; xray/ and cds/ have tables of their own.
        def of(key: str) -> str | None:
            prefix = key.split("/")[0]
            return prefix if prefix in ("xray", "cds") else None

        return [
            (o.scenario.label, o.scenario.mode_label, o.median)
            for o in outcomes.values()
            if of(o.scenario.key) == group
        ]

    main_rows, xray_rows, cds_rows = rows(None), rows("xray"), rows("cds")
    ratios = compute_ratios(outcomes, cfg, fhir)
    traced = tracing_rows(outcomes)
    ratio_lines = [
        f"  {name:<48} {value:6.2f}   goal {goal:<11} {verdict}"
        for name, value, goal, verdict in ratios
    ]
    errors = [
        f"  {o.scenario.label} {o.scenario.mode_label}: {k} x{v}"
        for o in outcomes.values()
        for k, v in sorted(o.errors.items(), key=lambda kv: -kv[1])[:3]
    ]
    setup = describe_servers(cfg, servers, ml_version)
    text = ["breast-cancer, 1 row of 30 FP32 per request (medians)", ""]
    text.append(render_text(HEADERS, table_rows(main_rows)))
    if xray_rows:
        text += ["", "chest-xray, 1x1x224x224 FP32 per request, binary tensor extension", ""]
        text.append(render_text(HEADERS, table_rows(xray_rows)))
    if cds_rows:
        text += ["", CDS_TITLE, ""]
        text.append(render_text(HEADERS, table_rows(cds_rows)))
    if traced:
        text += ["", "tracing cost (parentbased_traceidratio, OTLP/HTTP to a local sink)", ""]
        text.append(render_text(TRACING_HEADERS, traced))
    text += ["", "ratios (of medians)", *ratio_lines]
    if errors:
        text += ["", "errors seen", *errors]
    text += ["", "checks", *(f"  {n}" for n in notes), "", "setup", *(f"  {s}" for s in setup)]
    text.append(f"\nwhole run: {elapsed:.0f} s")

    md = ["# phiserve serving benchmark", "", f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC", ""]
    md += ["## breast-cancer (medians)", "", render_markdown(HEADERS, table_rows(main_rows))]
    if xray_rows:
        md += ["", "## chest-xray", "", render_markdown(HEADERS, table_rows(xray_rows))]
    if cds_rows:
        md += [
            "",
            "## CDS Hooks",
            "",
            CDS_TITLE,
            "",
            render_markdown(HEADERS, table_rows(cds_rows)),
        ]
    if traced:
        md += ["", "## Tracing cost", "", render_markdown(TRACING_HEADERS, traced)]
    md += ["", "## Ratios", "", "| ratio | value | goal | verdict |", "| --- | ---: | --- | --- |"]
    md += [f"| {n} | {v:.2f} | {g} | {verdict} |" for n, v, g, verdict in ratios]
    md += ["", "## Checks", "", *(f"- {n}" for n in notes)]
    md += ["", "## Setup", "", *(f"- {s}" for s in setup)]
    md += ["", "## Versions", "", *(f"- {k}: {v}" for k, v in _versions().items())]

    doc = {
        "started_utc": dt.datetime.now(dt.UTC).isoformat(),
        "config": {
            k: (sorted(v) if isinstance(v, frozenset) else str(v) if isinstance(v, Path) else v)
            for k, v in cfg.__dict__.items()
        },
        "versions": {**_versions(), "mlserver": ml_version},
        "results": [
            {
                "key": o.scenario.key,
                "label": o.scenario.label,
                "mode": o.scenario.mode_label,
                "median": o.median.to_json(),
                "runs": [r.to_json() for r in o.runs],
                "errors": o.errors,
            }
            for o in outcomes.values()
        ],
        "ratios": [
            {"name": n, "value": None if v != v else v, "goal": g, "verdict": verdict}
            for n, v, g, verdict in ratios
        ],
        "notes": notes,
        "fhir_parse": fhir,
        "setup": setup,
        "elapsed_s": elapsed,
    }
    return {"text": "\n".join(text), "markdown": "\n".join(md) + "\n", "json": doc}


def write_report(cfg: BenchConfig, report: dict[str, Any]) -> None:
    """reports/bench/serving-<UTC time>.{json,md} and serving-latest.{json,md}."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in (f"serving-{stamp}", "serving-latest"):
        (cfg.out_dir / f"{name}.json").write_text(json.dumps(report["json"], indent=2))
        (cfg.out_dir / f"{name}.md").write_text(report["markdown"])
    print(f"written: {cfg.out_dir / f'serving-{stamp}.json'} and .md")


if __name__ == "__main__":
    sys.exit(main())
