"""``MODEL_CARD.md``: a version's model card rendered as Markdown from its authenticated manifest.

The publisher writes it beside the encrypted artifact, ``phiserve models verify`` checks the file
against a fresh rendering, and the CDS Hooks cards link to it; the card's fields follow Google's
Model Card Toolkit schema (see :mod:`phiserve.export.card`, which builds them at export time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _ci(row: Mapping[str, Any]) -> str:
    ci = row.get("confidence_interval") or {}
    lo, hi = ci.get("lower_bound"), ci.get("upper_bound")
    return "n/a" if lo is None or hi is None else f"{lo:.3f} to {hi:.3f}"


def _value(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_markdown(card: Mapping[str, Any]) -> str:
    """Render a card as Markdown for ``MODEL_CARD.md`` beside the artifact."""
    d, p = card["model_details"], card["model_parameters"]
    qa, c = card["quantitative_analysis"], card["considerations"]
    version = d["version"].get("name") or "unpublished"
    lines = [f"# Model card: {d['name']} (version {version})", "", d["overview"], ""]
    lines += ["## Intended use", "", card["intended_use"], ""]
    lines += ["## Model details", ""]
    lines += [f"- Owner: {o['name']} ({o.get('contact', 'no contact given')})" for o in d["owners"]]
    lines += [f"- Licence: {lic['identifier']}" for lic in d["licenses"]]
    lines += [f"- Reference: {r['reference']}" for r in d["references"]]
    lines += [f"- Citation: {x['citation']}" for x in d.get("citations", [])]
    if d["version"].get("date"):
        lines.append(f"- Published: {d['version']['date']}")
    lines += ["", "## Model parameters", "", f"- Architecture: {p['model_architecture']}"]
    lines += [f"- {x['name'].capitalize()} data: {x['description']}" for x in p["data"]]
    lines.append(f"- Input: {p['input_format']}")
    lines += [f"  - `{r['key']}`: {r['value']}" for r in p["input_format_map"]]
    lines.append(f"- Output: {p['output_format']}")
    lines += [f"  - `{r['key']}`: {r['value']}" for r in p["output_format_map"]]
    lines += ["", "## Quantitative analysis", ""]
    if qa["performance_metrics"]:
        lines += [
            "| Metric | Slice | Value | CI | Threshold | n (positive) |",
            "|---|---|---|---|---|---|",
        ]
        for m in qa["performance_metrics"]:
            n = f"{m['n']} ({m['n_positive']})" if "n" in m else ""
            lines.append(
                f"| {m['type']} | {m['slice']} | {_value(m['value'])} | {_ci(m)} "
                f"| {_value(m.get('threshold'))} | {n} |"
            )
    else:
        lines.append("No performance metrics: the model has not been evaluated.")
    lines += ["", "## Considerations", ""]
    for title, key in [
        ("Users", "users"),
        ("Use cases", "use_cases"),
        ("Limitations", "limitations"),
        ("Trade-offs", "tradeoffs"),
    ]:
        if c[key]:
            lines += [f"### {title}", ""] + [f"- {x['description']}" for x in c[key]] + [""]
    lines += ["### Risks and mitigations", ""]
    for e in c["ethical_considerations"]:
        lines += [f"- {e['name']}", f"  - Mitigation: {e['mitigation_strategy']}"]
    lines += ["", "## Artifact", "", f"- Format: {card['artifact']['format']}"]
    lines.append(f"- SHA-256 of the plaintext ONNX: {card['artifact']['sha256'] or 'unpublished'}")
    return "\n".join(lines) + "\n"
