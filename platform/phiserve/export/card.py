"""Model cards as plain JSON-able dicts, in the fields of Google's Model Card Toolkit schema.

A card travels inside the authenticated manifest and may be rendered to ``MODEL_CARD.md`` beside
the encrypted artifact: it describes the model, never patients, so it holds no PHI. The export
script supplies the prose; this module gives it the schema's shape, derives the input and output
formats from the ONNX graph (so the card cannot drift from the artifact) and renders Markdown.
The publisher fills ``model_details.version`` and ``artifact.sha256`` with ``complete_card``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

CARD_SCHEMA = "model-card-toolkit-0.0.2+phiserve-1"


def tensor_formats(onnx_bytes: bytes) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``input_format_map`` and ``output_format_map`` rows read from the ONNX graph.

    Each row is ``{"key": name, "value": "float32 [-1, 30]"}``; -1 marks a variable dimension.
    """
    import onnx  # export-time only

    graph = onnx.load_from_string(onnx_bytes).graph

    def rows(values: Sequence[Any]) -> list[dict[str, str]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out.append({"key": v.name, "value": f"{dtype} {dims}"})
        return out

    return rows(graph.input), rows(graph.output)


def build_card(
    *,
    name: str,
    overview: str,
    owners: Sequence[Mapping[str, str]],
    licence: str,
    references: Sequence[str],
    architecture: str,
    training_data: str,
    evaluation_data: str,
    input_format: str,
    output_format: str,
    onnx_bytes: bytes,
    intended_use: str,
    users: Sequence[str],
    use_cases: Sequence[str],
    limitations: Sequence[str],
    risks: Mapping[str, str],
    performance_metrics: Sequence[Mapping[str, Any]] = (),
    tradeoffs: Sequence[str] = (),
    citations: Sequence[str] = (),
) -> dict[str, Any]:
    """A model card dict with the Model Card Toolkit sections plus intended use and artifact.

    ``owners`` are ``{"name", "contact"}`` dicts; ``licence`` an SPDX identifier; ``risks``
    maps each ethical consideration or risk to its mitigation strategy; ``performance_metrics``
    are rows as ``evaluate_binary`` returns them. Version and digest stay ``None`` until the
    repository publishes the artifact (``complete_card``).
    """
    input_map, output_map = tensor_formats(onnx_bytes)
    return {
        "schema": CARD_SCHEMA,
        "model_details": {
            "name": name,
            "overview": overview,
            "owners": [dict(o) for o in owners],
            "version": {"name": None, "date": None},  # filled by the publisher
            "licenses": [{"identifier": licence}],
            "references": [{"reference": r} for r in references],
            "citations": [{"citation": c} for c in citations],
        },
        "model_parameters": {
            "model_architecture": architecture,
            "data": [
                {"name": "training", "description": training_data},
                {"name": "evaluation", "description": evaluation_data},
            ],
            "input_format": input_format,
            "input_format_map": input_map,
            "output_format": output_format,
            "output_format_map": output_map,
        },
        "quantitative_analysis": {"performance_metrics": [dict(m) for m in performance_metrics]},
        "considerations": {
            "users": [{"description": u} for u in users],
            "use_cases": [{"description": u} for u in use_cases],
            "limitations": [{"description": x} for x in limitations],
            "tradeoffs": [{"description": x} for x in tradeoffs],
            "ethical_considerations": [
                {"name": risk, "mitigation_strategy": mitigation}
                for risk, mitigation in risks.items()
            ],
        },
        "intended_use": intended_use,
        "artifact": {"format": "onnx", "sha256": None},  # filled by the publisher
    }


def complete_card(
    card: Mapping[str, Any], *, version: int, sha256: str, date: str
) -> dict[str, Any]:
    """A copy of ``card`` with the published version, date and artifact digest filled in."""
    done = copy.deepcopy(dict(card))
    done["model_details"]["version"] = {"name": str(version), "date": date}
    done["artifact"]["sha256"] = sha256
    return done
