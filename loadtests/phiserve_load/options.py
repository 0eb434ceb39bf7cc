"""The custom command-line arguments and the typed options the rest of the package reads.

Every argument can also come from the environment (``LOCUST_<NAME>``, the locust convention) or a
locust config file. The token itself is deliberately *not* an argument: command lines show up in
process listings and in the web UI, so it comes from ``PHISERVE_TOKEN`` or ``--token-file``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LOAD_SHAPES = ("closed", "open", "ramp")
ENCODINGS = ("json", "binary")
DEFAULT_MODELS = "breast-cancer,chest-xray"
DEFAULT_DURATION_S = 60.0
DURATION_ATTR = "phiserve_duration_s"


class OptionsError(ValueError):
    """A command-line value that cannot be used; the message says which and why."""


def add_arguments(parser: Any) -> None:
    """Register phiserve's arguments on locust's parser (``init_command_line_parser``)."""
    g = parser.add_argument_group("phiserve load shape")
    g.add_argument(
        "--load-shape",
        choices=LOAD_SHAPES,
        default="closed",
        env_var="LOCUST_LOAD_SHAPE",
        help="closed: -u users send back to back; open: a fixed arrival rate (--rate), latency "
        "measured from each request's scheduled time; ramp: steps of rate or users to find the "
        "knee. Length: -t (default 60s) for closed/open, steps x step length for ramp.",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=10.0,
        env_var="LOCUST_RATE",
        help="open loop: requests per second, all workers together (default 10)",
    )
    g.add_argument(
        "--arrival",
        choices=("constant", "poisson"),
        default="constant",
        env_var="LOCUST_ARRIVAL",
        help="open loop: evenly spaced arrivals or a Poisson process",
    )
    g.add_argument(
        "--dispatchers",
        type=int,
        default=1,
        env_var="LOCUST_DISPATCHERS",
        help="open loop: dispatcher users sharing the rate; one per worker process "
        "in distributed runs (default 1)",
    )
    g.add_argument(
        "--max-outstanding",
        type=int,
        default=256,
        env_var="LOCUST_MAX_OUTSTANDING",
        help="open loop: requests in flight per dispatcher before new arrivals are "
        "dropped and counted as errors (default 256)",
    )
    g.add_argument(
        "--ramp-kind",
        choices=("rate", "users"),
        default="rate",
        env_var="LOCUST_RAMP_KIND",
        help="ramp: step the open-loop rate (default) or the closed-loop users",
    )
    g.add_argument(
        "--ramp-start",
        type=float,
        default=10.0,
        env_var="LOCUST_RAMP_START",
        help="ramp: first step's rate (req/s) or users (default 10)",
    )
    g.add_argument(
        "--ramp-step",
        type=float,
        default=10.0,
        env_var="LOCUST_RAMP_STEP",
        help="ramp: increase per step (default 10)",
    )
    g.add_argument(
        "--ramp-steps",
        type=int,
        default=5,
        env_var="LOCUST_RAMP_STEPS",
        help="ramp: number of steps (default 5)",
    )
    g.add_argument(
        "--ramp-step-s",
        type=float,
        default=10.0,
        env_var="LOCUST_RAMP_STEP_S",
        help="ramp: seconds per step (default 10)",
    )
    g.add_argument(
        "--max-requests",
        type=int,
        default=0,
        env_var="LOCUST_MAX_REQUESTS",
        help="stop after this many requests (0: no count limit)",
    )
    g.add_argument(
        "--warmup-s",
        type=float,
        default=0.0,
        env_var="LOCUST_WARMUP_S",
        help="requests started in the first seconds are reported but not gated",
    )
    g.add_argument(
        "--think-time",
        type=float,
        default=0.0,
        env_var="LOCUST_THINK_TIME",
        help="closed loop: seconds each user waits between requests (default 0)",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        env_var="LOCUST_REQUEST_TIMEOUT",
        help="seconds per request (default 30)",
    )

    r = parser.add_argument_group("phiserve requests")
    r.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        env_var="LOCUST_MODELS",
        help="comma-separated models; name@1+2 picks versions, name@default uses "
        "the unversioned route; default every live version "
        f"(default {DEFAULT_MODELS})",
    )
    r.add_argument(
        "--encodings",
        default="json,binary",
        env_var="LOCUST_ENCODINGS",
        help="json, binary (binary tensor data extension) or both (default)",
    )
    r.add_argument(
        "--batch-sizes",
        default="1",
        env_var="LOCUST_BATCH_SIZES",
        help="comma-separated rows per request, chosen at random (default 1)",
    )
    r.add_argument(
        "--mix",
        default="",
        env_var="LOCUST_MIX",
        help="weights, e.g. 'breast-cancer=3,chest-xray:json=0.2'; keys are "
        "model[@version][:encoding], the most specific match wins, default 1",
    )
    r.add_argument(
        "--payload-variants",
        type=int,
        default=4,
        env_var="LOCUST_PAYLOAD_VARIANTS",
        help="distinct random bodies pre-built per model, version, encoding, batch",
    )
    r.add_argument(
        "--dim-size",
        type=int,
        default=8,
        env_var="LOCUST_DIM_SIZE",
        help="size used for variable (-1) dimensions other than the batch axis",
    )
    r.add_argument(
        "--seed",
        type=int,
        default=None,
        env_var="LOCUST_SEED",
        help="random seed for payloads and the mix (default: random)",
    )
    r.add_argument(
        "--token-file",
        default="",
        env_var="PHISERVE_TOKEN_FILE",
        help="file holding the bearer token (re-read when it changes); otherwise "
        "the PHISERVE_TOKEN environment variable",
    )
    r.add_argument(
        "--insecure",
        action="store_true",
        default=False,
        env_var="LOCUST_INSECURE",
        help="do not verify the server's TLS certificate",
    )

    c = parser.add_argument_group("phiserve CDS Hooks (instead of V2 inference)")
    c.add_argument(
        "--cds-service",
        default="",
        env_var="LOCUST_CDS_SERVICE",
        help="call this CDS Hooks service (patient-view, signed client JWTs, a realistic "
        "prefetch) instead of V2 inference; closed loop or a users ramp",
    )
    c.add_argument(
        "--cds-key-file",
        default="",
        env_var="LOCUST_CDS_KEY_FILE",
        help="the EHR's private signing key, a JWK with kid and alg (e.g. ES384)",
    )
    c.add_argument(
        "--cds-iss",
        default="",
        env_var="LOCUST_CDS_ISS",
        help="the EHR's issuer, as the server's PHISERVE_CDS_CLIENTS lists it",
    )
    c.add_argument(
        "--cds-observations",
        type=int,
        default=100,
        env_var="LOCUST_CDS_OBSERVATIONS",
        help="Observations in each call's prefetch (default 100)",
    )

    s = parser.add_argument_group("phiserve SLO gate and report")
    s.add_argument(
        "--slo",
        default="",
        env_var="LOCUST_SLO",
        help="thresholds, e.g. 'p95=200,p99=500,errors=1%%;chest-xray:p99=800' "
        "(ms; a clause without a model applies to every model)",
    )
    s.add_argument(
        "--slo-file",
        default="",
        env_var="LOCUST_SLO_FILE",
        help="YAML or JSON file of thresholds (see loadtests/slo.example.yaml)",
    )
    s.add_argument(
        "--report-dir",
        default="",
        env_var="LOCUST_REPORT_DIR",
        help="where samples.csv, summary.json, report.md and charts go "
        "(default reports/loadtest/<timestamp>)",
    )
    s.add_argument(
        "--metrics-url",
        default="",
        env_var="LOCUST_METRICS_URL",
        help="server metrics to scrape (default <host>/metrics; 'off' disables)",
    )
    s.add_argument(
        "--scrape-interval",
        type=float,
        default=5.0,
        env_var="LOCUST_SCRAPE_INTERVAL",
        help="seconds between scrapes (default 5)",
    )
    s.add_argument(
        "--no-charts",
        action="store_true",
        default=False,
        env_var="LOCUST_NO_CHARTS",
        help="skip the PNG charts (faster; markdown and CSV are still written)",
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class LoadOptions:
    """Everything the package reads from the command line, validated once."""

    host: str = ""
    load_shape: str = "closed"
    users: int = 1
    spawn_rate: float = 1.0
    duration_s: float = DEFAULT_DURATION_S
    rate: float = 10.0
    arrival: str = "constant"
    dispatchers: int = 1
    max_outstanding: int = 256
    ramp_kind: str = "rate"
    ramp_start: float = 10.0
    ramp_step: float = 10.0
    ramp_steps: int = 5
    ramp_step_s: float = 10.0
    max_requests: int = 0
    warmup_s: float = 0.0
    think_time: float = 0.0
    request_timeout: float = 30.0
    models: str = DEFAULT_MODELS
    encodings: tuple[str, ...] = ENCODINGS
    batch_sizes: tuple[int, ...] = (1,)
    mix: str = ""
    payload_variants: int = 4
    dim_size: int = 8
    seed: int | None = None
    token_file: str = ""
    insecure: bool = False
    slo: str = ""
    slo_file: str = ""
    report_dir: str = ""
    metrics_url: str = ""
    scrape_interval: float = 5.0
    no_charts: bool = False
    cds_service: str = ""
    cds_key_file: str = ""
    cds_iss: str = ""
    cds_observations: int = 100

    @property
    def is_open(self) -> bool:
        """True when requests follow an arrival schedule (open loop or a rate ramp)."""
        return self.load_shape == "open" or (self.load_shape == "ramp" and self.ramp_kind == "rate")

    @property
    def total_s(self) -> float:
        """Planned length of the run in seconds."""
        if self.load_shape == "ramp":
            return self.ramp_steps * self.ramp_step_s
        return self.duration_s

    def ramp_value(self, step: int) -> float:
        """Rate (req/s) or users of ramp step ``step`` (0-based)."""
        return self.ramp_start + step * self.ramp_step

    def step_of(self, elapsed_s: float) -> int:
        """Ramp step that ``elapsed_s`` falls in (-1 outside a ramp)."""
        if self.load_shape != "ramp" or elapsed_s < 0:
            return -1
        return min(int(elapsed_s // self.ramp_step_s), self.ramp_steps - 1)


def from_parsed(parsed: Any, host: str | None = None) -> LoadOptions:
    """Validate locust's parsed options (a namespace; missing attributes take defaults)."""
    defaults = LoadOptions()

    def get(name: str, default: Any) -> Any:
        value = getattr(parsed, name, None) if parsed is not None else None
        return default if value is None else value

    encodings = tuple(_split(get("encodings", ",".join(ENCODINGS))))
    bad = [e for e in encodings if e not in ENCODINGS]
    if bad or not encodings:
        raise OptionsError(f"--encodings: unknown {bad or 'empty'}; use json, binary or both")
    try:
        batch_sizes = tuple(int(b) for b in _split(str(get("batch_sizes", "1"))))
    except ValueError as exc:
        raise OptionsError(f"--batch-sizes: {exc}") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise OptionsError("--batch-sizes: need positive integers, e.g. 1,4,16")
    # The hooks move -t into phiserve_duration_s (the shape, not locust's timer, ends the run),
    # and locust sends such attributes on to the workers with the other custom options.
    run_time = get(DURATION_ATTR, None) or get("run_time", None)
    duration = float(run_time) if run_time else DEFAULT_DURATION_S
    opts = LoadOptions(
        host=(host if host is not None else get("host", "")) or "",
        load_shape=get("load_shape", defaults.load_shape),
        users=int(get("num_users", defaults.users)),
        spawn_rate=float(get("spawn_rate", defaults.spawn_rate)),
        duration_s=duration,
        rate=float(get("rate", defaults.rate)),
        arrival=get("arrival", defaults.arrival),
        dispatchers=int(get("dispatchers", defaults.dispatchers)),
        max_outstanding=int(get("max_outstanding", defaults.max_outstanding)),
        ramp_kind=get("ramp_kind", defaults.ramp_kind),
        ramp_start=float(get("ramp_start", defaults.ramp_start)),
        ramp_step=float(get("ramp_step", defaults.ramp_step)),
        ramp_steps=int(get("ramp_steps", defaults.ramp_steps)),
        ramp_step_s=float(get("ramp_step_s", defaults.ramp_step_s)),
        max_requests=int(get("max_requests", 0)),
        warmup_s=float(get("warmup_s", 0.0)),
        think_time=float(get("think_time", 0.0)),
        request_timeout=float(get("request_timeout", 30.0)),
        models=str(get("models", DEFAULT_MODELS)),
        encodings=encodings,
        batch_sizes=batch_sizes,
        mix=str(get("mix", "")),
        payload_variants=int(get("payload_variants", 4)),
        dim_size=int(get("dim_size", 8)),
        seed=getattr(parsed, "seed", None),
        token_file=str(get("token_file", "")),
        insecure=bool(get("insecure", False)),
        slo=str(get("slo", "")),
        slo_file=str(get("slo_file", "")),
        report_dir=str(get("report_dir", "")),
        metrics_url=str(get("metrics_url", "")),
        scrape_interval=float(get("scrape_interval", 5.0)),
        no_charts=bool(get("no_charts", False)),
        cds_service=str(get("cds_service", "")),
        cds_key_file=str(get("cds_key_file", "")),
        cds_iss=str(get("cds_iss", "")),
        cds_observations=int(get("cds_observations", 100)),
    )
    _validate(opts)
    return opts


def _validate(o: LoadOptions) -> None:
    checks = [
        (o.load_shape in LOAD_SHAPES, f"--load-shape: one of {', '.join(LOAD_SHAPES)}"),
        (o.duration_s > 0, "-t/--run-time: must be positive"),
        (o.rate > 0 and math.isfinite(o.rate), "--rate: must be a positive number"),
        (o.dispatchers >= 1, "--dispatchers: at least 1"),
        (o.max_outstanding >= 1, "--max-outstanding: at least 1"),
        (o.ramp_steps >= 1 and o.ramp_step_s > 0, "--ramp-steps/--ramp-step-s: positive"),
        (o.ramp_start > 0 and o.ramp_step >= 0, "--ramp-start > 0 and --ramp-step >= 0"),
        (o.users >= 1, "-u/--users: at least 1"),
        (o.payload_variants >= 1, "--payload-variants: at least 1"),
        (o.dim_size >= 1, "--dim-size: at least 1"),
        (o.request_timeout > 0, "--request-timeout: must be positive"),
        (o.max_requests >= 0, "--max-requests: 0 or more"),
        (o.scrape_interval > 0, "--scrape-interval: must be positive"),
        (o.cds_observations >= 1, "--cds-observations: at least 1"),
        (not (o.cds_service and o.is_open), "--cds-service: closed loop or a users ramp only"),
    ]
    for ok, message in checks:
        if not ok:
            raise OptionsError(message)
