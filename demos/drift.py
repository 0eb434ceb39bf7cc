"""``make drift-demo``: a shifted population reaches breast-cancer halfway; the PSI crosses.

Starts phiserve (dev keys and the example models in a temporary home, or a copy of DEMO_HOME)
with a small drift window, sends DEMO_ROWS rows of the Wisconsin data in requests of 5 rows,
the second half scaled by DEMO_SHIFT (larger nuclei: a different referral population), and reads
/metrics after every request. The report (reports/drift-demo/: psi.png, report.md) charts the
score's PSI and the features' largest PSI against the drift threshold, with the switch marked.

Knobs: DEMO_ROWS (1200), DEMO_SHIFT (1.12), DEMO_WINDOW (300 rows), DEMO_HOME, DEMO_OUT.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import matplotlib
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer

from tests.server import ServerProcess, prepare_home

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
MODEL = "breast-cancer"
ROWS_PER_REQUEST = 5
FEATURE = "mean radius"  # the size of the nuclei: what a different referral population changes


@dataclass
class Point:
    """What /metrics said after ``rows`` rows."""

    rows: int
    score_psi: float
    feature_psi: dict[str, float]
    alerts: int
    threshold: float


def scrape(client: httpx.Client, rows: int) -> Point | None:
    """PSI series of the demo model now (None while the window is too small for PSI)."""
    psi: dict[str, float] = {}
    alerts, threshold = 0, float("nan")
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.labels.get("model") != MODEL:
                continue
            if s.name == "phiserve_drift_psi":
                psi[s.labels["feature"]] = s.value
            elif s.name == "phiserve_drift_alert":
                alerts += int(s.value)
            elif s.name == "phiserve_drift_psi_threshold":
                threshold = s.value
    if "_score" not in psi:
        return None
    score = psi.pop("_score")
    return Point(rows, score, psi, alerts, threshold)


def chart(points: list[Point], switch: int, out: Path) -> str:
    """Plot the PSI over rows sent; returns the PNG's path."""
    rows = [p.rows for p in points]
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ax.plot(rows, [p.score_psi for p in points], label="PSI of the score", lw=2.2)
    ax.plot(rows, [max(p.feature_psi.values()) for p in points], label="largest feature PSI")
    ax.plot(rows, [p.feature_psi[FEATURE] for p in points], label=f"PSI of {FEATURE!r}", ls="--")
    ax.axhline(points[-1].threshold, color="crimson", ls=":", label="drift threshold")
    ax.axvline(switch, color="grey", ls="-.", label="shifted population starts")
    ax.set_xlabel("rows predicted")
    ax.set_ylabel("population stability index")
    ax.set_title(f"{MODEL}: drift window vs training deciles")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = out / "psi.png"
    fig.savefig(png)
    plt.close(fig)
    return str(png)


def main() -> int:
    total = int(os.environ.get("DEMO_ROWS", "1200"))
    shift = float(os.environ.get("DEMO_SHIFT", "1.12"))
    window = os.environ.get("DEMO_WINDOW", "300")
    out = Path(os.environ.get("DEMO_OUT", REPO / "reports" / "drift-demo"))
    out.mkdir(parents=True, exist_ok=True)
    x = load_breast_cancer().data.astype(np.float32)
    rng = np.random.default_rng(0)
    switch = total // 2
    with tempfile.TemporaryDirectory(prefix="phiserve-drift-") as tmp:
        home = Path(tmp) / "home"
        if os.environ.get("DEMO_HOME"):
            shutil.copytree(os.environ["DEMO_HOME"], home)
        else:
            print("preparing a phiserve home (dev keys, example models) ...", flush=True)
            prepare_home(home, REPO / "models")
        # PSI only from half a window on: fewer rows make it noisy enough to cross by chance.
        env = {
            "PHISERVE_MONITORING_WINDOW": window,
            "PHISERVE_MONITORING_MIN_ROWS": str(int(window) // 2),
        }
        points: list[Point] = []
        with ServerProcess(home, **env) as server:
            print(
                f"phiserve at {server.url}; sending {total} rows, shifted x{shift} from row {switch}"
            )
            with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
                for sent in range(0, total, ROWS_PER_REQUEST):
                    batch = x[rng.choice(len(x), ROWS_PER_REQUEST)]
                    if sent >= switch:
                        batch = batch * shift
                    body = {"inputs": [{"name": "input", "datatype": "FP32",
                                        "shape": list(batch.shape),
                                        "data": batch.ravel().tolist()}]}  # fmt: skip
                    client.post(f"/v2/models/{MODEL}/infer", json=body).raise_for_status()
                    if point := scrape(client, sent + ROWS_PER_REQUEST):
                        points.append(point)
    png = chart(points, switch, out)
    threshold = points[-1].threshold
    after = (p.rows for p in points if p.rows > switch and p.score_psi > threshold)
    crossed = next(after, None)
    before = max(p.score_psi for p in points if p.rows <= switch)
    lines = [
        f"# Drift demo: {MODEL}",
        "",
        f"Window {window} rows; {total} rows sent, the second half scaled by {shift}.",
        "",
        f"![PSI over rows predicted]({Path(png).name})",
        "",
        "| | value |",
        "|---|---|",
        f"| drift threshold (PSI) | {threshold:.2f} |",
        f"| largest score PSI before the shift | {before:.3f} |",
        f"| score PSI crossed the threshold at row | {crossed} ({(crossed or 0) - switch} rows after the shift) |",
        f"| score PSI at the end | {points[-1].score_psi:.2f} |",
        f"| PSI of {FEATURE!r} at the end | {points[-1].feature_psi[FEATURE]:.2f} |",
        f"| features alerting at the end | {points[-1].alerts} of {len(points[-1].feature_psi) + 1} series |",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    print(f"chart: {png}")
    return 0 if crossed is not None and before < threshold else 1


if __name__ == "__main__":
    raise SystemExit(main())
