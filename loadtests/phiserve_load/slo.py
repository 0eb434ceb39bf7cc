"""SLO thresholds per model and the gate that turns a run into an exit code.

From the command line (``--slo``)::

    p95=200,p99=500,errors=1%            every model
    chest-xray:p99=800                   one model (all its versions together)
    chest-xray@2:p99=700                 one model version
    p95=200,p99=500;chest-xray:p99=800   clauses joined with ';'

or a YAML/JSON file (``--slo-file``; JSON needs no PyYAML)::

    default: {p95_ms: 200, p99_ms: 500, error_rate: 0.01}
    models:
      chest-xray: {p99_ms: 800}
      chest-xray@2: {p99_ms: 700}

Latencies are milliseconds (``250``, ``250ms`` or ``0.25s``); error rates a fraction or a
percentage. The command line overrides the file, metric by metric. Percentiles are gated on the
exact per-request samples (see :mod:`phiserve_load.samples`), never on locust's rounded ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiserve_load.samples import Stats

DEFAULT_KEY = "*"
# Metric name -> Stats attribute. "errors" gates the error rate.
METRICS: dict[str, str] = {
    "p50": "p50_ms",
    "p90": "p90_ms",
    "p95": "p95_ms",
    "p99": "p99_ms",
    "p999": "p999_ms",
    "max": "max_ms",
    "errors": "error_rate",
}
_ALIASES = {f"{k}_ms": k for k in METRICS if k != "errors"} | {
    "error_rate": "errors",
    "error": "errors",
    "err": "errors",
}


class SLOError(ValueError):
    """A threshold that cannot be parsed."""


def _metric(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        raise SLOError(f"unknown SLO metric {name!r} (use {', '.join(METRICS)})")
    return key


def _value(metric: str, raw: Any) -> float:
    text = str(raw).strip().lower()
    scale, number = 1.0, text
    if metric == "errors" and text.endswith("%"):
        scale, number = 0.01, text[:-1]
    elif metric != "errors" and text.endswith("ms"):
        number = text[:-2]
    elif metric != "errors" and text.endswith("s"):
        scale, number = 1000.0, text[:-1]
    try:
        value = float(number) * scale
    except ValueError:
        raise SLOError(f"{metric}: cannot read {raw!r} as a number") from None
    if not math.isfinite(value) or value < 0:
        raise SLOError(f"{metric}: {raw!r} must be a non-negative number")
    if metric == "errors" and value > 1:
        raise SLOError(f"error rate {raw!r} is not between 0 and 1 (or 0% and 100%)")
    return value


@dataclass
class SLO:
    """Thresholds: group key (``*``, ``model`` or ``model@version``) -> metric -> limit."""

    limits: dict[str, dict[str, float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.limits.values())

    def merge(self, other: SLO) -> SLO:
        """``other`` overrides ``self`` metric by metric."""
        out = {k: dict(v) for k, v in self.limits.items()}
        for key, metrics in other.limits.items():
            out.setdefault(key, {}).update(metrics)
        return SLO(out)

    def for_group(self, key: str) -> dict[str, float]:
        """Effective limits of a group: defaults, then the model's, then the version's own."""
        model = key.split("@", 1)[0]
        limits = dict(self.limits.get(DEFAULT_KEY, {}))
        limits.update(self.limits.get(model, {}))
        if "@" in key:
            limits.update(self.limits.get(key, {}))
        return limits

    def to_json(self) -> dict[str, dict[str, float]]:
        """Plain dict for summary.json."""
        return {k: dict(v) for k, v in self.limits.items() if v}


def parse_cli(text: str) -> SLO:
    """Parse ``--slo``."""
    limits: dict[str, dict[str, float]] = {}
    for clause in (c.strip() for c in text.split(";")):
        if not clause:
            continue
        key = DEFAULT_KEY
        head, sep, rest = clause.partition(":")
        if sep and "=" not in head:
            key, clause = head.strip(), rest
        for item in (i.strip() for i in clause.split(",")):
            if not item:
                continue
            name, eq, raw = item.partition("=")
            if not eq:
                raise SLOError(f"--slo: {item!r} needs metric=value, e.g. p99=500")
            metric = _metric(name)
            limits.setdefault(key, {})[metric] = _value(metric, raw)
    return SLO(limits)


def _from_mapping(doc: Any, where: str) -> dict[str, float]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SLOError(f"{where}: expected a mapping of metric: value")
    out: dict[str, float] = {}
    for name, raw in doc.items():
        metric = _metric(str(name))
        out[metric] = _value(metric, raw)
    return out


def parse_document(doc: Any) -> SLO:
    """Parse a loaded YAML/JSON document (see the module docstring)."""
    if not isinstance(doc, dict):
        raise SLOError("SLO file: expected a mapping with 'default' and/or 'models'")
    unknown = set(doc) - {"default", "models"}
    if unknown:
        raise SLOError(f"SLO file: unknown keys {sorted(unknown)} (use 'default' and 'models')")
    limits = {DEFAULT_KEY: _from_mapping(doc.get("default"), "default")}
    models = doc.get("models") or {}
    if not isinstance(models, dict):
        raise SLOError("SLO file: 'models' must map model names to thresholds")
    for key, value in models.items():
        limits[str(key)] = _from_mapping(value, f"models.{key}")
    return SLO(limits)


def load_file(path: str) -> SLO:
    """Read a YAML (needs PyYAML) or JSON SLO file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SLOError(f"cannot read SLO file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".json":
        doc = json.loads(text)
    else:
        try:
            import yaml
        except ImportError:
            try:
                doc = json.loads(text)
            except ValueError:
                raise SLOError(
                    f"{p}: reading YAML needs PyYAML; install it or give the file as JSON"
                ) from None
        else:
            doc = yaml.safe_load(text)
    return parse_document(doc)


def build(cli: str = "", file: str = "") -> SLO:
    """The effective SLO: file first, command line on top."""
    slo = load_file(file) if file else SLO()
    return slo.merge(parse_cli(cli)) if cli else slo


@dataclass(frozen=True)
class Check:
    """One metric of one group against its limit."""

    group: str
    metric: str
    limit: float
    actual: float
    passed: bool

    def describe(self) -> str:
        """A sentence, e.g. ``chest-xray p99 812.40 ms > 800 ms (MISSED)``."""
        op = "<=" if self.passed else ">"
        if math.isnan(self.actual):
            actual = "no requests" if self.metric == "errors" else "no successful requests"
            op = "vs"
        elif self.metric == "errors":
            actual = f"{100 * self.actual:.2f}%"
        else:
            actual = f"{self.actual:.2f} ms"
        if self.metric == "errors":
            return f"{self.group} error rate {actual} {op} {100 * self.limit:g}%"
        return f"{self.group} {self.metric} {actual} {op} {self.limit:g} ms"

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "group": self.group,
            "metric": self.metric,
            "limit": self.limit,
            "actual": None if math.isnan(self.actual) else self.actual,
            "passed": self.passed,
        }


def evaluate(
    slo: SLO, per_group: dict[str, Stats], targeted: set[str] | None = None
) -> list[Check]:
    """Check every model (and every model@version the SLO names) against its limits.

    ``per_group`` holds stats per model and per ``model@version``; ``targeted`` the models and
    ``model@version`` labels the run sent requests to. A targeted group without samples fails (a
    model that was never measured cannot meet its objective); a group the SLO names that the
    run did not target is not applicable, so one SLO file can serve runs of a subset of models.
    """
    named = [k for k in slo.limits if k != DEFAULT_KEY and slo.limits[k]]
    if targeted is not None:
        named = [k for k in named if k in targeted]
    groups = list(dict.fromkeys([g for g in per_group if "@" not in g] + named))
    checks: list[Check] = []
    for group in groups:
        stats = per_group.get(group)
        for metric, limit in sorted(slo.for_group(group).items()):
            if stats is None or stats.requests == 0:
                actual = math.nan
            else:
                actual = float(getattr(stats, METRICS[metric]))
            passed = not math.isnan(actual) and actual <= limit
            checks.append(Check(group, metric, limit, actual, passed))
    return checks
