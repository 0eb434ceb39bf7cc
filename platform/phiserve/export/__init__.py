"""What an export script hands to the model repository, and the shared pieces that build it.

An export script (``models/<name>/export.py``) defines ``export(seed: int = 0) -> ExportedModel``:
it trains or builds its model, converts it to ONNX bytes in memory (never on disk), proves parity
with ``check_parity``, evaluates it (``evaluate_binary``) and describes it (``build_card``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phiserve.export.card import build_card, complete_card
from phiserve.export.loader import load_export
from phiserve.export.metrics import evaluate_binary
from phiserve.export.parity import ParityError, check_parity, run_onnx

# Opset every example pins: supported by the onnxruntime CPU and GPU builds the server may use,
# and the dynamo exporter's native opset (no version conversion pass).
TARGET_OPSET = 18

__all__ = [
    "TARGET_OPSET",
    "ExportedModel",
    "ParityError",
    "build_card",
    "check_parity",
    "complete_card",
    "evaluate_binary",
    "load_export",
    "run_onnx",
]


@dataclass(frozen=True)
class ExportedModel:
    """One exported model, ready to be encrypted and published.

    ``parity`` records the native-vs-onnxruntime check (it must have ``passed: True``),
    ``metrics`` the evaluation on held-out data, ``card`` the model card (Model Card Toolkit
    fields). The repository derives the signature from the ONNX graph itself.
    """

    name: str
    onnx_bytes: bytes
    parity: dict[str, Any]
    metrics: dict[str, Any]
    card: dict[str, Any]
    # Per-model serving hints recorded in the manifest (e.g. {"max_batch_size": 8}).
    serving: dict[str, Any] = field(default_factory=dict)
    # Blocks for the concerns around the model, by concern (see Manifest.extensions).
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)
