"""Locust event listeners: options, preflight, samples, scrapes, the report and the SLO gate.

Who does what:

local runner  preflight, users, samples to samples.csv, scrapes, report, gate, exit code
master        preflight, samples from workers' reports to samples.csv, scrapes, report, gate
worker        users; buffers samples and ships them with each stats report to the master

The gate runs only where the report is (master or local runner): a worker's exit code means
nothing to the user. Its exit codes: 0 every threshold met, 3 a threshold missed, 2 the run
could not start or the report could not be written (with one sentence saying why).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.parse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gevent
import locust
from locust import events
from locust.runners import LocalRunner, MasterRunner, WorkerRunner

from phiserve_load import cds_user, promtext, report, session, slo
from phiserve_load import options as options_mod
from phiserve_load.discovery import Client, PreflightError
from phiserve_load.mix import MixError
from phiserve_load.samples import Sample, SampleWriter
from phiserve_load.tensors import UnsupportedSignature
from phiserve_load.users import CONTEXT_KEY

log = logging.getLogger("phiserve_load")

EXIT_MISSED = 3
EXIT_UNUSABLE = 2
WIRE_KEY = "phiserve_samples"
DEFAULT_STOP_TIMEOUT_S = 10.0


class Scraper:
    """Scrapes the server's /metrics at the start, periodically, and at the end of the run."""

    def __init__(self, url: str, interval: float, *, insecure: bool = False) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.client = Client(f"{parts.scheme}://{parts.netloc}", None, insecure=insecure)
        self.interval = interval
        self.scrapes: list[dict[str, Any]] = []
        self.status = "not scraped"
        self._greenlet: gevent.Greenlet | None = None

    def scrape_once(self) -> None:
        """One scrape; failures are recorded in :attr:`status`, never raised."""
        try:
            code, _, body = self.client.request("GET", self.path, auth=False, timeout=5.0)
        except PreflightError as exc:
            self.status = f"{self.url} unreachable ({exc})"
            return
        if code != 200:
            self.status = f"GET {self.url} answered {code}"
            return
        series = promtext.parse(body.decode("utf-8", errors="replace"))
        self.scrapes.append({"t": time.time(), "series": series})
        self.status = "ok" if series else f"{self.url} has no phiserve histograms"

    def start(self) -> None:
        """First scrape now, then one every interval."""
        self.scrape_once()
        self._greenlet = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.interval)
            self.scrape_once()

    def stop(self) -> None:
        """Final scrape (idempotent)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
            self.scrape_once()

    def to_json(self) -> dict[str, Any]:
        """For metrics.json."""
        return {"url": self.url, "status": self.status, "scrapes": self.scrapes}


class RunState:
    """Per-process state of the hooks (module-level singleton :data:`STATE`)."""

    def __init__(self) -> None:
        self.role = "local"
        self.opts: options_mod.LoadOptions | None = None
        self.slo = slo.SLO()
        self.report_dir: Path | None = None
        self.writer: SampleWriter | None = None
        self.buffer: list[Sample] = []
        self.scraper: Scraper | None = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.environment: Any = None


STATE = RunState()


def _fail(message: str) -> None:
    """End the process with one clear sentence (no traceback) before any load is sent."""
    sys.stderr.write(f"phiserve-load: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_UNUSABLE)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any, **_: Any) -> None:
    options_mod.add_arguments(parser)


@events.init.add_listener
def on_init(environment: Any, runner: Any = None, **_: Any) -> None:
    """Validate options and run the preflight (master/local); set up sample handling."""
    STATE.environment = environment
    if isinstance(runner, WorkerRunner):
        STATE.role = "worker"
        return
    STATE.role = "master" if isinstance(runner, MasterRunner) else "local"
    parsed = environment.parsed_options
    if parsed is None:  # locust used as a library without options: nothing to set up
        return
    try:
        # -t becomes the shape's duration: the shape ends the run itself, after draining.
        if getattr(parsed, "run_time", None):
            setattr(parsed, options_mod.DURATION_ATTR, float(parsed.run_time))
            parsed.run_time = None
        opts = options_mod.from_parsed(parsed, environment.host)
        STATE.slo = slo.build(opts.slo, opts.slo_file)
        if opts.cds_service:
            cds_user.ensure(environment, preflight=True)
        else:
            local = isinstance(runner, LocalRunner)
            session.ensure(environment, build_payloads=local, preflight=True)
    except (
        PreflightError,
        options_mod.OptionsError,
        slo.SLOError,
        MixError,
        UnsupportedSignature,
        FileNotFoundError,
    ) as exc:
        _fail(str(exc))
        return
    STATE.opts = opts
    if not environment.stop_timeout:
        # Let in-flight requests finish when users stop: their latency belongs in the report.
        environment.stop_timeout = min(DEFAULT_STOP_TIMEOUT_S, opts.request_timeout)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    STATE.report_dir = Path(opts.report_dir or f"reports/loadtest/{stamp}")
    STATE.writer = SampleWriter(STATE.report_dir / report.SAMPLES_FILE)
    log.info("phiserve-load: report directory %s", STATE.report_dir)


def _short_error(exc: BaseException) -> str:
    text = (
        str(exc)
        if type(exc).__module__.startswith("phiserve_load")
        else f"{type(exc).__name__}: {exc}"
    )
    return " ".join(text.split())[:200]


@events.request.add_listener
def on_request(
    name: str,
    response_time: float,
    response: Any = None,
    context: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """Turn each of our requests into an exact sample."""
    ctx = (context or {}).get(CONTEXT_KEY)
    if ctx is None:
        return
    sample = Sample(
        t_start=float(ctx["t_start"]),
        t_end=time.time(),
        name=name,
        model=ctx["model"],
        version=ctx["version"],
        encoding=ctx["encoding"],
        batch=int(ctx["batch"]),
        latency_ms=float(response_time),
        service_ms=float(ctx.get("service_ms", response_time)),
        lag_ms=float(ctx.get("lag_ms", 0.0)),
        ok=exception is None,
        status=int(getattr(response, "status_code", 0) or 0),
        error="" if exception is None else _short_error(exception),
        step=int(ctx.get("step", -1)),
    )
    if STATE.role == "worker":
        STATE.buffer.append(sample)
    elif STATE.writer is not None:
        STATE.writer.write([sample])
        _check_count()


def _check_count() -> None:
    opts, writer = STATE.opts, STATE.writer
    if opts and writer and opts.max_requests and writer.count >= opts.max_requests:
        shape = getattr(STATE.environment, "shape_class", None)
        if shape is not None and hasattr(shape, "stop_now"):
            shape.stop_now()


@events.report_to_master.add_listener
def on_report_to_master(data: dict[str, Any], **_: Any) -> None:
    """Worker: ship buffered samples with the stats report."""
    if STATE.buffer:
        data[WIRE_KEY] = [s.to_wire() for s in STATE.buffer]
        STATE.buffer = []


@events.worker_report.add_listener
def on_worker_report(data: dict[str, Any], **_: Any) -> None:
    """Master: append the workers' samples to samples.csv."""
    rows = data.get(WIRE_KEY)
    if rows and STATE.writer is not None:
        STATE.writer.write(Sample.from_wire(r) for r in rows)
        _check_count()


@events.test_start.add_listener
def on_test_start(environment: Any, **_: Any) -> None:
    """Master/local: note the start and begin scraping."""
    if STATE.role == "worker" or STATE.opts is None:
        return
    STATE.started_at = time.time()
    opts = STATE.opts
    url = opts.metrics_url or f"{opts.host.rstrip('/')}/metrics"
    if url != "off":
        STATE.scraper = Scraper(url, opts.scrape_interval, insecure=opts.insecure)
        STATE.scraper.start()


@events.test_stop.add_listener
def on_test_stop(environment: Any, **_: Any) -> None:
    """Master/local: note the end and take the last scrape."""
    if STATE.role == "worker" or STATE.opts is None:
        return
    STATE.stopped_at = time.time()
    if STATE.scraper is not None:
        STATE.scraper.stop()


def _run_doc(environment: Any) -> dict[str, Any]:
    opts = STATE.opts
    assert opts is not None
    sess = session.current()
    doc_opts = asdict(opts)
    doc_opts["duration_s"] = opts.duration_s
    return {
        "host": opts.host,
        "runner": STATE.role,
        "locust_version": locust.__version__,
        "started_at": STATE.started_at,
        "stopped_at": STATE.stopped_at or time.time(),
        "planned_s": opts.total_s,
        "warmup_s": opts.warmup_s,
        "open_loop": opts.is_open,
        "options": doc_opts,
        "slo": STATE.slo.to_json(),
        "targets": sess.describe_targets() if sess else [],
        "token": sess.tokens.origin if sess else "",
    }


def write_outputs(environment: Any) -> report.Rendered | None:
    """Close the samples, write run.json and metrics.json, render the report."""
    if STATE.writer is None or STATE.report_dir is None:
        return None
    STATE.writer.close()
    if STATE.scraper is not None:
        STATE.scraper.stop()
    out = STATE.report_dir
    (out / report.RUN_FILE).write_text(json.dumps(_run_doc(environment), indent=2) + "\n")
    metrics = (
        STATE.scraper.to_json() if STATE.scraper else {"status": "disabled (--metrics-url off)"}
    )
    (out / report.METRICS_FILE).write_text(json.dumps(metrics) + "\n")
    return report.render(out, charts=not (STATE.opts and STATE.opts.no_charts))


@events.quitting.add_listener
def on_quitting(environment: Any, **_: Any) -> None:
    """Master/local: write the report, print the table, set the exit code from the gate."""
    if STATE.role == "worker" or STATE.writer is None:
        return
    try:
        rendered = write_outputs(environment)
    except Exception as exc:  # the run is over; say what failed instead of a traceback
        log.exception("phiserve-load: writing the report failed")
        sys.stderr.write(f"phiserve-load: could not write the report: {exc}\n")
        environment.process_exit_code = EXIT_UNUSABLE
        return
    if rendered is None:
        return
    print(
        f"\nphiserve load test: {rendered.summary['total']['requests']} requests; exact percentiles"
    )
    print(rendered.table)
    if rendered.gated:
        for check in rendered.checks:
            print(("  ok      " if check.passed else "  MISSED  ") + check.describe())
        if rendered.passed:
            print(f"SLO gate: passed ({len(rendered.checks)} checks)")
        else:
            missed = "; ".join(c.describe() for c in rendered.missed)
            print(f"SLO gate: MISSED {missed}")
            sys.stderr.write(f"phiserve-load: SLO missed: {missed}\n")
    print(f"report: {rendered.report_dir / report.REPORT_FILE}")
    sys.stdout.flush()
    if rendered.gated:
        # The gate decides, not locust's "any failure exits 1": an allowed error rate passes.
        environment.process_exit_code = 0 if rendered.passed else EXIT_MISSED
