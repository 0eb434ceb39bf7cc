"""What reading FHIR costs per request: fhir.resources validation vs the whole mapping.

``python -m benchmarks.fhir_parse`` builds synthetic prefetches the way an EHR sends them (the
CDS Hooks load user's :func:`phiserve_load.cds.synthetic_prefetch`: a Patient, an in-progress
Encounter and a searchset Bundle of N Observations: hourly vital signs, blood-pressure panels,
labs every 6 hours, all for the deterioration model's codes) and times, per request, on this
process (no server):

- ``json``: ``json.loads`` of the body (the floor any JSON API pays);
- ``parse``: :func:`phiserve.fhir.parse.parse_resources`, i.e. fhir.resources' R4B validation;
- ``extract``: :func:`phiserve.fhir.features.extract` on the parsed resources (the mapping);
- ``whole``: all three, as the FHIR route and the CDS service run them.

It prints medians (and p95) over BENCH_FHIR_RUNS (200) runs for each size in BENCH_FHIR_SIZES
(``25,100,1000``), the parse share of the whole, and the cost per resource. Everything here is
synthetic; nothing is written.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from phiserve.fhir.features import extract
from phiserve.fhir.mapping import FhirMapping
from phiserve.fhir.parse import parse_resources
from phiserve_load.cds import synthetic_prefetch

FEATURES = Path(__file__).resolve().parent.parent / "models" / "deterioration" / "features.yaml"
PATIENT = "bench-patient"


def deterioration_mapping() -> FhirMapping:
    """The deterioration model's mapping as declared (training means: 0; timing only)."""
    spec = yaml.safe_load(FEATURES.read_text())
    return FhirMapping.model_validate(
        {**spec, "features": [{**f, "impute": 0.0} for f in spec["features"]]}
    )


def _timed(stages: dict[str, Callable[[], Any]], runs: int) -> dict[str, list[float]]:
    """Milliseconds per call of each stage; stages take turns, so a busy spell on this shared
    machine hits them all alike."""
    out: dict[str, list[float]] = {name: [] for name in stages}
    for fn in stages.values():
        fn()  # warm caches (the model classes' validators, lru caches)
    for _ in range(runs):
        for name, fn in stages.items():
            started = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - started) * 1000.0)
    return out


def measure(n: int, runs: int, mapping: FhirMapping) -> dict[str, Any]:
    """Timings (ms) of each stage for one prefetch of ``n`` Observations."""
    now = datetime.now(UTC)
    body = json.dumps(synthetic_prefetch(n, patient=PATIENT, now=now)).encode()
    docs = json.loads(body)
    resources = parse_resources(list(docs.values()), max_entries=10_000)

    def whole() -> None:
        parsed = parse_resources(list(json.loads(body).values()), max_entries=10_000)
        extract(mapping, parsed, patient_id=PATIENT, now=now)

    stages = _timed(
        {
            "json": lambda: json.loads(body),
            "parse": lambda: parse_resources(list(docs.values()), max_entries=10_000),
            "extract": lambda: extract(mapping, resources, patient_id=PATIENT, now=now),
            "whole": whole,
        },
        runs,
    )
    return {
        "observations": n,
        "resources": len(resources),
        "body_kib": round(len(body) / 1024, 1),
        **{f"{k}_ms": round(statistics.median(v), 3) for k, v in stages.items()},
        **{f"{k}_p95_ms": round(float(np.percentile(v, 95)), 3) for k, v in stages.items()},
    }


def report(rows: list[dict[str, Any]]) -> str:
    """The printed table."""
    lines = [
        f"FHIR parsing per request: fhir.resources {version('fhir.resources')} (R4B models), "
        "medians (p95) in ms; machine shared",
        "",
        "| Observations | body KiB | json | parse (fhir.resources) | extract (mapping) | whole "
        "| parse / whole | parse us/resource |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = r["parse_ms"] / r["whole_ms"] if r["whole_ms"] else float("nan")
        lines.append(
            f"| {r['observations']} | {r['body_kib']} | {r['json_ms']:.2f} ({r['json_p95_ms']:.2f}) "
            f"| {r['parse_ms']:.2f} ({r['parse_p95_ms']:.2f}) "
            f"| {r['extract_ms']:.2f} ({r['extract_p95_ms']:.2f}) "
            f"| {r['whole_ms']:.2f} ({r['whole_p95_ms']:.2f}) | {share:.0%} "
            f"| {1000 * r['parse_ms'] / r['resources']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Measure every size and print the table."""
    sizes = [int(s) for s in os.environ.get("BENCH_FHIR_SIZES", "25,100,1000").split(",")]
    runs = int(os.environ.get("BENCH_FHIR_RUNS", "200"))
    mapping = deterioration_mapping()
    rows = [measure(n, max(5, runs if n <= 100 else runs // 10), mapping) for n in sizes]
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
