"""Model cards: Model Card Toolkit fields, honest text, and the Markdown rendering."""

from __future__ import annotations

import hashlib
import json

import pytest

from phiserve.export import ExportedModel, complete_card
from phiserve.export.card import tensor_formats
from phiserve.repository.card import render_markdown
from tests.export.helpers import MODEL_NAMES

REQUIRED = {
    "model_details": {"name", "overview", "owners", "version", "licenses", "references"},
    "model_parameters": {"model_architecture", "data", "input_format", "output_format"},
    "quantitative_analysis": {"performance_metrics"},
    "considerations": {"users", "use_cases", "limitations", "ethical_considerations"},
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_card_has_model_card_toolkit_fields(name: str, exports: dict[str, ExportedModel]) -> None:
    card = exports[name].card
    for section, fields in REQUIRED.items():
        assert fields <= set(card[section]), section
    details, params, considerations = (
        card["model_details"],
        card["model_parameters"],
        card["considerations"],
    )
    assert details["name"] == name
    assert details["version"] == {"name": None, "date": None}  # the publisher fills it
    assert all(o["name"] and o["contact"] for o in details["owners"])
    assert all(lic["identifier"] for lic in details["licenses"])
    assert details["references"] and all(r["reference"] for r in details["references"])
    assert {d["name"] for d in params["data"]} == {"training", "evaluation"}
    assert all(d["description"] for d in params["data"])
    for key in ("users", "use_cases", "limitations"):
        assert considerations[key] and all(x["description"] for x in considerations[key])
    risks = considerations["ethical_considerations"]
    assert risks and all(r["name"] and r["mitigation_strategy"] for r in risks)
    assert card["intended_use"]
    assert card["artifact"] == {"format": "onnx", "sha256": None}
    assert json.loads(json.dumps(card, allow_nan=False)) == card  # a plain JSON-able dict


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_card_formats_match_the_graph(name: str, exports: dict[str, ExportedModel]) -> None:
    inputs, outputs = tensor_formats(exports[name].onnx_bytes)
    params = exports[name].card["model_parameters"]
    assert params["input_format_map"] == inputs
    assert params["output_format_map"] == outputs
    assert inputs[0]["value"].startswith("float32 [-1, ")


def test_breast_cancer_reports_auc_sensitivity_specificity(breast_cancer: ExportedModel) -> None:
    metrics = breast_cancer.metrics
    rows = breast_cancer.card["quantitative_analysis"]["performance_metrics"]
    assert rows == metrics["performance_metrics"]
    overall = {r["type"]: r for r in rows if r["slice"] == "all"}
    assert set(overall) == {"AUC", "sensitivity", "specificity"}
    for row in overall.values():
        ci = row["confidence_interval"]
        assert ci["lower_bound"] <= row["value"] <= ci["upper_bound"]
        assert row["n"] == 171  # the held-out 30% of 569
    assert overall["sensitivity"]["threshold"] == metrics["decision_threshold"] == 0.5
    assert "0.5" in metrics["threshold_rule"]
    assert metrics["summary"]["AUC"] > 0.95  # a sanity floor, not a claim
    slices = {r["slice"] for r in rows} - {"all"}
    assert len(slices) == 3  # tumour-size tertiles
    assert "bootstrap" in metrics["confidence_interval"]


def test_chest_xray_card_says_demonstration_weights(chest_xray: ExportedModel) -> None:
    card = chest_xray.card
    for text in (card["model_details"]["overview"], card["intended_use"]):
        assert "demonstration weights" in text.lower()
        assert "not for diagnosis" in text.lower()
    assert "gpu" in card["intended_use"].lower()
    assert "payload" in card["intended_use"].lower()
    assert card["quantitative_analysis"]["performance_metrics"] == []
    assert "none" in card["model_parameters"]["data"][0]["description"].lower()


def test_complete_card_fills_version_and_digest(breast_cancer: ExportedModel) -> None:
    sha = hashlib.sha256(breast_cancer.onnx_bytes).hexdigest()
    done = complete_card(breast_cancer.card, version=3, sha256=sha, date="2025-01-31")
    assert done["model_details"]["version"] == {"name": "3", "date": "2025-01-31"}
    assert done["artifact"]["sha256"] == sha
    assert breast_cancer.card["artifact"]["sha256"] is None  # the original is untouched


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_markdown_rendering(name: str, exports: dict[str, ExportedModel]) -> None:
    exported = exports[name]
    sha = hashlib.sha256(exported.onnx_bytes).hexdigest()
    text = render_markdown(complete_card(exported.card, version=1, sha256=sha, date="2025-01-31"))
    assert text.startswith(f"# Model card: {name} (version 1)\n")
    for heading in ("## Intended use", "## Quantitative analysis", "### Risks and mitigations"):
        assert heading in text
    assert sha in text
    assert "Mitigation:" in text


def test_markdown_shows_metrics_and_demonstration_notice(exports: dict[str, ExportedModel]) -> None:
    bc = render_markdown(exports["breast-cancer"].card)
    assert "| AUC | all | 0.99" in bc
    assert "version unpublished" in bc
    cx = render_markdown(exports["chest-xray"].card)
    assert "DEMONSTRATION WEIGHTS, NOT FOR DIAGNOSIS" in cx
    assert "not been evaluated" in cx
