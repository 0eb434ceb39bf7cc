"""The report: summary.json, report.md, table.txt and PNG charts, from the files of a run.

Everything is computed from what the run wrote to its report directory (``run.json``,
``samples.csv``, ``metrics.json``), so the same code renders the report at the end of a run and
later, e.g. after copying a cluster run's directory to a laptop with matplotlib::

    python loadtests/report.py reports/loadtest/<run>

Charts need matplotlib; without it the markdown says so and everything else is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiserve_load import promtext, slo
from phiserve_load.samples import Sample, Stats, group_by, read_samples, summarize

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.csv"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
TABLE_FILE = "table.txt"
CHARTS_DIR = "charts"

PERCENTILE_NOTE = (
    "Percentiles are exact: computed from every request's own latency in samples.csv "
    "(linear interpolation between closest ranks, numpy's default), not from locust's rounded "
    "response-time buckets. They cover successful requests; failures count in the error rate."
)
OPEN_LOOP_NOTE = (
    "Open loop: requests were issued at scheduled times whether or not earlier ones had been "
    "answered, and latency runs from the scheduled send time (no coordinated omission). "
    "'service p99' is send-to-answer; 'lag p99' is how late the dispatcher sent, and a large "
    "lag means the load generator, not the server, was the bottleneck."
)


@dataclass
class Rendered:
    """What a render produced."""

    report_dir: Path
    table: str
    checks: list[slo.Check]
    summary: dict[str, Any]
    charts: list[str] = field(default_factory=list)

    @property
    def gated(self) -> bool:
        """True when an SLO was configured."""
        return bool(self.checks)

    @property
    def passed(self) -> bool:
        """True when every check passed (vacuously true without an SLO)."""
        return all(c.passed for c in self.checks)

    @property
    def missed(self) -> list[slo.Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _fmt(value: float, digits: int = 2) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:,.{digits}f}"
    )


def _target_key(s: Sample) -> str:
    return f"{s.label} {s.encoding}"


def table_rows(per_target: dict[str, Stats], per_model: dict[str, Stats]) -> list[list[str]]:
    """Rows: each model's targets, then the model as a whole (what the gate checks)."""
    rows = []
    for model, total in per_model.items():
        for key, st in per_target.items():
            if key.split("@", 1)[0] == model:
                rows.append(_row(key, st))
        rows.append(_row(f"{model} (all)", total))
    return rows


def _row(name: str, st: Stats) -> list[str]:
    return [
        name,
        str(st.requests),
        str(st.failures),
        _fmt(st.throughput, 1),
        _fmt(st.p50_ms),
        _fmt(st.p95_ms),
        _fmt(st.p99_ms),
        _fmt(st.max_ms),
    ]


TABLE_HEADERS = ["target", "requests", "fails", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms"]


def render_text(headers: list[str], rows: list[list[str]], *, labels: int = 1) -> str:
    """Fixed-width table; the first ``labels`` columns left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < labels else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def render_markdown(headers: list[str], rows: list[list[str]], *, labels: int = 1) -> str:
    """GitHub markdown table; the first ``labels`` columns left-aligned, numbers right-aligned."""
    out = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * labels + ["---:"] * (len(headers) - labels)) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _window(run: dict[str, Any], samples: list[Sample]) -> tuple[float, float]:
    start = float(run.get("started_at") or (min((s.t_start for s in samples), default=0.0)))
    start += float(run.get("warmup_s") or 0.0)
    last = max((s.t_end for s in samples), default=start)
    stopped = run.get("stopped_at")
    end = min(float(stopped), last) if stopped else last
    return start, max(end, start)


def _ramp_steps(run: dict[str, Any], samples: list[Sample]) -> list[dict[str, Any]]:
    opts = run.get("options", {})
    if opts.get("load_shape") != "ramp":
        return []
    step_s = float(opts["ramp_step_s"])
    started = float(run.get("started_at") or 0.0)
    steps = int(opts["ramp_steps"])
    by_step: dict[int, list[Sample]] = {i: [] for i in range(steps)}
    for s in samples:
        # Rate ramps carry the dispatcher's own step; user ramps are placed by start time.
        step = s.step if s.step >= 0 else min(int((s.t_start - started) // step_s), steps - 1)
        if 0 <= step < steps:
            by_step[step].append(s)
    # Achieved throughput counts answers *received* during the step: in an open loop the
    # answers to a step's arrivals may come much later when the server falls behind.
    done = [0] * steps
    for s in samples:
        i = int((s.t_end - started) // step_s)
        if s.ok and 0 <= i < steps:
            done[i] += 1
    out = []
    for i in range(steps):
        out.append(
            {
                "step": i,
                "offered": float(opts["ramp_start"]) + i * float(opts["ramp_step"]),
                "achieved": done[i] / step_s,
                "stats": summarize(by_step[i], step_s),
            }
        )
    return out


def find_knee(steps: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """First step where the server stops keeping up.

    Rate ramp: achieved < 90% of offered, errors > 1%, or p99 > 3x the first step's p99.
    Users ramp: throughput grew < 10% over the previous step, errors > 1%, or p99 > 3x.
    Returns the step and why, with the last good step's load; None if every step held.
    """
    if not steps:
        return None
    base = steps[0]["stats"].p99_ms
    for i, step in enumerate(steps):
        st: Stats = step["stats"]
        reasons = []
        if kind == "rate" and step["achieved"] < 0.9 * step["offered"]:
            reasons.append(f"achieved {step['achieved']:.1f} of {step['offered']:.1f} req/s")
        if kind == "users" and i > 0 and step["achieved"] < 1.1 * steps[i - 1]["achieved"]:
            reasons.append("throughput stopped growing")
        if st.error_rate > 0.01:
            reasons.append(f"errors {100 * st.error_rate:.1f}%")
        if i > 0 and not math.isnan(base) and st.p99_ms > 3 * base:
            reasons.append(f"p99 {st.p99_ms:.1f} ms > 3x first step")
        if reasons:
            last_good = steps[i - 1]["offered"] if i > 0 else None
            return {
                "step": i,
                "offered": step["offered"],
                "last_good": last_good,
                "why": "; ".join(reasons),
            }
    return None


def _server_rows(breakdown: dict[str, Any], client: dict[str, Stats]) -> list[list[str]]:
    rows = []
    for label, comps in sorted(breakdown.items()):
        model = label.split("@", 1)[0]
        cl = client.get(label) or client.get(model)
        q, inf, srv, b = (comps.get(k, {}) for k in ("queue", "inference", "server", "batch"))
        net = (cl.mean_ms - srv["mean"]) if cl and srv else math.nan
        rows.append(
            [
                label,
                _fmt(cl.p99_ms) if cl else "-",
                _fmt(srv.get("p99", math.nan)),
                _fmt(q.get("p99", math.nan)),
                _fmt(inf.get("p99", math.nan)),
                _fmt(cl.mean_ms) if cl else "-",
                _fmt(srv.get("mean", math.nan)),
                _fmt(q.get("mean", math.nan)),
                _fmt(inf.get("mean", math.nan)),
                _fmt(net),
                _fmt(b.get("mean", math.nan), 1),
            ]
        )
    return rows


SERVER_HEADERS = [
    "model@version",
    "client p99",
    "server p99",
    "queue p99",
    "inference p99",
    "client mean",
    "server mean",
    "queue mean",
    "inference mean",
    "network+client mean",
    "rows/batch",
]


def render(report_dir: Path, *, charts: bool = True) -> Rendered:
    """Compute everything from the run's files and write the report files."""
    report_dir = Path(report_dir)
    run = json.loads((report_dir / RUN_FILE).read_text())
    all_samples = read_samples(report_dir / SAMPLES_FILE)
    start, end = _window(run, all_samples)
    warm = float(run.get("warmup_s") or 0.0)
    samples = [s for s in all_samples if s.t_start >= start] if warm else all_samples
    window_s = end - start

    # Sorted, so tables read the same from run to run whatever answered first.
    def stats_by(key: Callable[[Sample], str]) -> dict[str, Stats]:
        return {k: summarize(v, window_s) for k, v in sorted(group_by(samples, key).items())}

    per_model = stats_by(lambda s: s.model)
    per_label = stats_by(lambda s: s.label)
    per_target = stats_by(_target_key)
    per_name = stats_by(lambda s: s.name)
    total = summarize(samples, window_s)

    spec = slo.SLO(run.get("slo") or {})
    targets = run.get("targets") or []
    targeted = {t["model"] for t in targets} | {
        f"{t['model']}@{t['version'] or 'default'}" for t in targets
    }
    groups = {**per_model, **per_label}
    checks = slo.evaluate(spec, groups, targeted if targets else None) if spec else []

    metrics = _load_json(report_dir / METRICS_FILE) or {}
    scrapes = metrics.get("scrapes") or []
    # Server-side figures over the same window as the client's: from the first scrape after the
    # warm-up (when there is one before the end) to the last.
    after_warmup = [s for s in scrapes[:-1] if s["t"] >= start]
    first = after_warmup[0] if warm and after_warmup else (scrapes[0] if scrapes else None)
    server = (
        promtext.breakdown(first["series"], scrapes[-1]["series"])
        if first is not None and len(scrapes) >= 2
        else {}
    )
    steps = _ramp_steps(run, samples)
    kind = run.get("options", {}).get("ramp_kind", "rate")
    knee = find_knee(steps, kind)

    rows = table_rows(per_target, per_model)
    table = render_text(TABLE_HEADERS, rows)
    errors: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            errors[f"{s.name}: {s.error}"] = errors.get(f"{s.name}: {s.error}", 0) + 1

    summary = {
        "percentiles": "exact per-request samples (samples.csv), numpy linear interpolation",
        "latency_origin": "scheduled send time" if run.get("open_loop") else "actual send time",
        "window": {"start": start, "end": end, "seconds": window_s, "warmup_s": warm},
        "total": total.to_json(),
        "models": {k: v.to_json() for k, v in per_model.items()},
        "versions": {k: v.to_json() for k, v in per_label.items()},
        "targets": {k: v.to_json() for k, v in per_target.items()},
        "requests": {k: v.to_json() for k, v in per_name.items()},
        "slo": {
            "configured": bool(checks),
            "passed": all(c.passed for c in checks) if checks else None,
            "checks": [c.to_json() for c in checks],
        },
        "server": _nan_to_none(server),
        "metrics_status": metrics.get("status", "not scraped"),
        "ramp": [
            {
                "step": s["step"],
                "offered": s["offered"],
                "achieved": s["achieved"],
                **s["stats"].to_json(),
            }
            for s in steps
        ],
        "knee": knee,
        "errors": errors,
        "table": table,
    }
    (report_dir / SUMMARY_FILE).write_text(json.dumps(_nan_to_none(summary), indent=2) + "\n")
    (report_dir / TABLE_FILE).write_text(table + "\n")

    made: list[str] = []
    chart_note = ""
    if charts:
        try:
            from phiserve_load import charts as charts_mod
        except ImportError as exc:
            chart_note = f"Charts were not drawn ({exc}); run `python loadtests/report.py {report_dir}` where matplotlib is installed."
        else:
            made = charts_mod.draw_all(
                report_dir / CHARTS_DIR, run, samples, scrapes, server, per_label, steps
            )
    else:
        chart_note = "Charts were not drawn (--no-charts)."

    rendered = Rendered(report_dir, table, checks, summary, made)
    (report_dir / REPORT_FILE).write_text(
        _markdown(run, rendered, rows, server, per_label, steps, knee, errors, metrics, chart_note)
    )
    return rendered


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _markdown(
    run: dict[str, Any],
    r: Rendered,
    rows: list[list[str]],
    server: dict[str, Any],
    per_label: dict[str, Stats],
    steps: list[dict[str, Any]],
    knee: dict[str, Any] | None,
    errors: dict[str, int],
    metrics: dict[str, Any],
    chart_note: str,
) -> str:
    opts = run.get("options", {})
    win = r.summary["window"]
    total = r.summary["total"]
    lines = [
        "# phiserve load test",
        "",
        f"- target: `{run.get('host', '?')}`, models: `{opts.get('models', '?')}`, "
        f"encodings: `{','.join(opts.get('encodings', []))}`, batch sizes: `{','.join(map(str, opts.get('batch_sizes', [])))}`",
        f"- load: {_describe_load(opts)}",
        f"- window: {win['seconds']:.1f} s (warm-up {win['warmup_s']:.1f} s excluded), "
        f"{total['requests']} requests, {total['failures']} failed, {_fmt(total['throughput'] or math.nan, 1)} req/s",
        f"- locust {run.get('locust_version', '?')}, runner: {run.get('runner', '?')}",
        "",
        "## SLO gate",
        "",
    ]
    if not r.checks:
        lines.append("No thresholds were set (`--slo` / `--slo-file`), so nothing was gated.")
    else:
        verdict = "PASSED" if r.passed else "MISSED"
        lines += [f"**{verdict}** ({len(r.checks)} checks, exact percentiles).", ""]
        lines += ["| check | result |", "|---|---|"]
        lines += [f"| {c.describe()} | {'pass' if c.passed else '**MISSED**'} |" for c in r.checks]
    lines += [
        "",
        "## Latency (exact)",
        "",
        render_markdown(TABLE_HEADERS, rows),
        "",
        PERCENTILE_NOTE,
        "",
    ]
    if run.get("open_loop"):
        lines += [
            OPEN_LOOP_NOTE,
            "",
            "| model@version | p99 (from schedule) | service p99 | lag p99 |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {k} | {_fmt(v.p99_ms)} | {_fmt(v.service_p99_ms)} | {_fmt(v.lag_p99_ms)} |"
            for k, v in per_label.items()
        ]
        lines.append("")
    lines += ["## Where the time goes (server /metrics)", ""]
    if server:
        lines += [
            "From the server's histograms, end-of-run scrape minus start-of-run scrape; ms. "
            "Histogram percentiles are bucket estimates (Prometheus `histogram_quantile`); "
            "means add up (client = queue + inference + rest of server + network and client), "
            "percentiles do not. Inference time is per batch.",
            "",
            render_markdown(SERVER_HEADERS, _server_rows(server, per_label)),
            "",
        ]
        if any(not c.get("consistent", True) for comps in server.values() for c in comps.values()):
            lines += [
                "**Warning:** a counter went down between scrapes: the server restarted or the "
                "metrics URL reaches several replicas; these figures are not reliable.",
                "",
            ]
    else:
        lines += [f"Not available: {metrics.get('status', 'not scraped')}.", ""]
    if steps:
        lines += [
            "## Ramp",
            "",
            "| step | offered | achieved req/s | p50 | p95 | p99 | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in steps:
            st: Stats = s["stats"]
            lines.append(
                f"| {s['step']} | {s['offered']:g} | {_fmt(s['achieved'], 1)} | {_fmt(st.p50_ms)} | "
                f"{_fmt(st.p95_ms)} | {_fmt(st.p99_ms)} | {100 * st.error_rate:.2f}% |"
            )
        lines.append("")
        unit = "req/s" if opts.get("ramp_kind") == "rate" else "users"
        if knee:
            good = (
                f"last good step: {knee['last_good']:g} {unit}"
                if knee["last_good"] is not None
                else "already at the first step"
            )
            lines += [f"**Knee** at {knee['offered']:g} {unit} ({knee['why']}); {good}.", ""]
        else:
            lines += ["No knee: every step kept up (raise `--ramp-start`/`--ramp-step`).", ""]
    if errors:
        lines += ["## Errors", "", "| count | request: error |", "|---:|---|"]
        lines += [f"| {n} | {k} |" for k, n in sorted(errors.items(), key=lambda kv: -kv[1])[:20]]
        lines.append("")
    lines += ["## Charts", ""]
    if r.charts:
        lines += [f"![{Path(c).stem}]({CHARTS_DIR}/{Path(c).name})" for c in r.charts]
    if chart_note:
        lines.append(chart_note)
    lines += [
        "",
        "## Files",
        "",
        "- `samples.csv`: one row per request (exact latency, service time, status, error)",
        "- `summary.json`: every figure above; `table.txt`: the latency table",
        "- `locust*.csv`, `locust.html`: locust's own statistics (rounded buckets; in an open loop"
        " its response times also run from the scheduled send time)",
        "- `metrics.json`: the server scrapes; `run.json`: the run's settings",
        "",
    ]
    return "\n".join(lines)


def _describe_load(opts: dict[str, Any]) -> str:
    shape = opts.get("load_shape")
    if shape == "open":
        return (
            f"open loop, {opts.get('rate')} req/s ({opts.get('arrival')} arrivals) for "
            f"{opts.get('duration_s')} s, {opts.get('dispatchers')} dispatcher(s), "
            f"at most {opts.get('max_outstanding')} in flight each"
        )
    if shape == "ramp":
        unit = "req/s" if opts.get("ramp_kind") == "rate" else "users"
        return (
            f"step ramp of {unit}: {opts.get('ramp_steps')} steps of {opts.get('ramp_step_s')} s "
            f"from {opts.get('ramp_start')} by {opts.get('ramp_step')}"
        )
    return (
        f"closed loop, {opts.get('users')} users, think time {opts.get('think_time')} s, "
        f"{opts.get('duration_s')} s"
    )


def main(argv: list[str] | None = None) -> int:
    """``python loadtests/report.py DIR``: render (again) the report of a run directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", type=Path)
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)
    if not (args.report_dir / RUN_FILE).exists():
        print(
            f"{args.report_dir}: no {RUN_FILE}; not a load-test report directory", file=sys.stderr
        )
        return 2
    rendered = render(args.report_dir, charts=not args.no_charts)
    print(rendered.table)
    for check in rendered.checks:
        print(("ok      " if check.passed else "MISSED  ") + check.describe())
    print(f"report: {args.report_dir / REPORT_FILE}")
    return 0 if rendered.passed else 3
