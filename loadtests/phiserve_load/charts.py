"""PNG charts of a run (matplotlib, headless). Importing this module needs matplotlib.

latency_over_time   exact p50/p95/p99 per time bucket, one panel per model version
throughput_over_time  successful and failed requests per second (and the offered rate)
latency_cdf         cumulative distribution of latency per model version and encoding
server_breakdown    mean latency split into queue wait, inference, rest of server, network+client;
                    and the p99 of each, side by side (from the server's /metrics)
queue_vs_inference  mean queue wait and inference time between scrapes, over time
ramp                offered vs achieved load and latency per ramp step
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: CI machines and cluster pods

import matplotlib.pyplot as plt

from phiserve_load import promtext
from phiserve_load.samples import Sample, Stats, group_by, percentile

DPI = 110


def _bucket_s(duration: float) -> float:
    """About 60-120 points per line, never below one second."""
    return max(1.0, math.ceil(duration / 90.0))


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def latency_over_time(path: Path, samples: list[Sample], t0: float, bucket: float) -> str:
    """p50/p95/p99 per bucket and model version."""
    groups = group_by((s for s in samples if s.ok), lambda s: s.label)
    n = max(1, len(groups))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), sharex=True, squeeze=False)
    for ax, (label, group) in zip(axes[:, 0], groups.items(), strict=False):
        buckets: dict[int, list[float]] = {}
        for s in group:
            buckets.setdefault(int((s.t_end - t0) // bucket), []).append(s.latency_ms)
        xs = sorted(buckets)
        for q, style in ((50, "-"), (95, "--"), (99, ":")):
            ys = [percentile(sorted(buckets[x]), q) for x in xs]
            # At bucket midpoints; the last bucket may be partial.
            ax.plot([(x + 0.5) * bucket for x in xs], ys, style, marker=".", label=f"p{q}")
        ax.set_title(label)
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel(f"seconds since start ({bucket:g} s buckets, exact percentiles)")
    return _save(fig, path)


def throughput_over_time(
    path: Path, samples: list[Sample], t0: float, bucket: float, offered: list[tuple[float, float]]
) -> str:
    """Requests per second per model version; failures dashed."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, group in group_by(samples, lambda s: s.label).items():
        ok: dict[int, int] = {}
        bad: dict[int, int] = {}
        for s in group:
            b = int((s.t_end - t0) // bucket)
            (ok if s.ok else bad)[b] = (ok if s.ok else bad).get(b, 0) + 1
        xs = sorted(set(ok) | set(bad))
        starts = [x * bucket for x in xs]
        ax.step(starts, [ok.get(x, 0) / bucket for x in xs], where="post", label=f"{label} ok")
        if bad:
            failed = [bad.get(x, 0) / bucket for x in xs]
            ax.step(starts, failed, "--", where="post", label=f"{label} failed")
    if offered:
        ax.step(
            [t for t, _ in offered],
            [r for _, r in offered],
            "k:",
            where="post",
            label="offered (all)",
        )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_cdf(path: Path, samples: list[Sample]) -> str:
    """Empirical CDF per model version and encoding, log latency axis."""
    fig, ax = plt.subplots(figsize=(9, 4))
    for key, group in group_by(
        (s for s in samples if s.ok), lambda s: f"{s.label} {s.encoding}"
    ).items():
        lat = sorted(s.latency_ms for s in group)
        n = len(lat)
        ax.plot(lat, [(i + 1) / n for i in range(n)], label=f"{key} (n={n})")
    for q in (0.95, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("latency ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def server_breakdown(path: Path, server: dict[str, Any], per_label: dict[str, Stats]) -> str:
    """Mean split (stacked) and p99 per component (grouped)."""
    labels = sorted(server)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(labels) + 3))
    parts = {
        "queue wait": [],
        "inference (per batch)": [],
        "rest of server": [],
        "network + client": [],
    }
    p99s = {"client (exact)": [], "server": [], "queue wait": [], "inference": []}
    for label in labels:
        comps = server[label]
        cl = per_label.get(label) or per_label.get(label.split("@", 1)[0])
        q = comps.get("queue", {}).get("mean", 0.0)
        inf = comps.get("inference", {}).get("mean", 0.0)
        srv = comps.get("server", {}).get("mean", math.nan)
        rest = max(0.0, srv - q - inf) if not math.isnan(srv) else 0.0
        net = max(0.0, cl.mean_ms - srv) if cl and not math.isnan(srv) else 0.0
        for name, v in zip(parts, (q, inf, rest, net), strict=True):
            parts[name].append(0.0 if math.isnan(v) else v)
        for name, v in zip(
            p99s,
            (
                cl.p99_ms if cl else math.nan,
                comps.get("server", {}).get("p99", math.nan),
                comps.get("queue", {}).get("p99", math.nan),
                comps.get("inference", {}).get("p99", math.nan),
            ),
            strict=True,
        ):
            p99s[name].append(0.0 if math.isnan(v) else v)
    y = list(range(len(labels)))
    left_edge = [0.0] * len(labels)
    for name, values in parts.items():
        left.barh(y, values, left=left_edge, label=name)
        left_edge = [a + b for a, b in zip(left_edge, values, strict=True)]
    left.set_yticks(y, labels)
    left.set_xlabel("mean ms (adds up)")
    left.legend(fontsize=8)
    height = 0.8 / len(p99s)
    for i, (name, values) in enumerate(p99s.items()):
        right.barh([v + i * height for v in y], values, height=height, label=name)
    right.set_yticks([v + 0.4 - height / 2 for v in y], labels)
    right.set_xlabel("p99 ms (does not add up)")
    right.legend(fontsize=8)
    return _save(fig, path)


def queue_vs_inference(path: Path, scrapes: list[dict[str, Any]], t0: float) -> str | None:
    """Mean queue wait and inference time between consecutive scrapes."""
    points = promtext.interval_means(scrapes)
    labels = sorted({k for p in points for k in (*p["queue_ms"], *p["inference_ms"])})
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        color = colors[
            i % len(colors)
        ]  # one color per model version: queue solid, inference dashed
        for key, style, what in (
            ("queue_ms", "-o", "queue wait"),
            ("inference_ms", "--s", "inference"),
        ):
            pts = [(p["t"] - t0, p[key][label]) for p in points if label in p[key]]
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                style,
                ms=3,
                color=color,
                label=f"{label} {what}",
            )
    ax.set_xlabel("seconds since start (between scrapes)")
    ax.set_ylabel("mean ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ramp(path: Path, steps: list[dict[str, Any]], kind: str) -> str:
    """Achieved vs offered and p50/p95/p99 per step."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    offered = [s["offered"] for s in steps]
    stats: list[Stats] = [s["stats"] for s in steps]
    top.plot(offered, [s["achieved"] for s in steps], "-o", label="achieved req/s (answers)")
    if kind == "rate":
        top.plot(offered, offered, "k:", label="offered")
    top.set_ylabel("req/s")
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    for q, attr in ((50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms")):
        bottom.plot(offered, [getattr(st, attr) for st in stats], "-o", label=f"p{q}")
    bottom.set_xlabel("offered req/s" if kind == "rate" else "users")
    bottom.set_ylabel("ms")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    return _save(fig, path)


def _offered_curve(run: dict[str, Any]) -> list[tuple[float, float]]:
    opts = run.get("options", {})
    if opts.get("load_shape") == "open":
        return [(0.0, float(opts["rate"])), (float(opts["duration_s"]), float(opts["rate"]))]
    if opts.get("load_shape") == "ramp" and opts.get("ramp_kind") == "rate":
        step_s = float(opts["ramp_step_s"])
        pts = [
            (i * step_s, float(opts["ramp_start"]) + i * float(opts["ramp_step"]))
            for i in range(int(opts["ramp_steps"]))
        ]
        return [*pts, (len(pts) * step_s, pts[-1][1])]
    return []


def draw_all(
    out_dir: Path,
    run: dict[str, Any],
    samples: list[Sample],
    scrapes: list[dict[str, Any]],
    server: dict[str, Any],
    per_label: dict[str, Stats],
    steps: list[dict[str, Any]],
) -> list[str]:
    """Draw every chart that has data; returns the file paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = float(run.get("started_at") or min((s.t_start for s in samples), default=0.0))
    duration = max((s.t_end for s in samples), default=t0) - t0
    bucket = _bucket_s(duration)
    made: list[str] = []
    if samples:
        made.append(latency_over_time(out_dir / "latency_over_time.png", samples, t0, bucket))
        made.append(
            throughput_over_time(
                out_dir / "throughput_over_time.png", samples, t0, bucket, _offered_curve(run)
            )
        )
        if any(s.ok for s in samples):
            made.append(latency_cdf(out_dir / "latency_cdf.png", samples))
    if server:
        made.append(server_breakdown(out_dir / "server_breakdown.png", server, per_label))
    if len(scrapes) >= 3:
        path = queue_vs_inference(out_dir / "queue_vs_inference.png", scrapes, t0)
        if path:
            made.append(path)
    if steps:
        made.append(
            ramp(out_dir / "ramp.png", steps, run.get("options", {}).get("ramp_kind", "rate"))
        )
    return made
